//! Turns a [`RawLab`] into a [`Lab`], or into every problem found, each with its position.
//!
//! Every value that later reaches a command line, a shell over SSH or an XML document passes
//! through here first: names are restricted to safe characters, addresses are parsed.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::defaults;
use super::file::{RawCheck, RawGuest, RawIproute2, RawLab, RawLibvirt, RawVxlan, RawWorkshop};
use super::source::{join_index, join_key, SourceMap};
use super::yaml::Node;
use super::{
    Accel, BuildMode, Check, DriverKind, Expect, Flood, Guest, Iproute2Settings, Lab,
    LibvirtSettings, Mac, Member, Problem, Source, Underlay, Vxlan, Workshop,
};

/// Longest lab name: it goes into namespace and domain names with a guest name after it.
const MAX_LAB_NAME: usize = 24;
/// Longest guest name.
const MAX_GUEST_NAME: usize = 32;
/// Guests are numbered in the last byte of their derived MACs.
pub const MAX_GUESTS: usize = 250;
/// Linux interface names hold at most 15 bytes.
const IFNAMSIZ: usize = defaults::MAX_IFNAME;

/// Whether `value` is 1 to `max` of `[a-z0-9-]`, starting with a letter or digit.
fn is_name(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
}

/// Whether `name` could name a lab, a workshop copy's included: what the state directory
/// may hold a directory for.
pub fn is_lab_name(name: &str) -> bool {
    // A copy's name is its lab's with `-` and an instance name after it.
    is_name(
        name,
        MAX_LAB_NAME + 1 + crate::lab::instance::MAX_INSTANCE_NAME,
    )
}

/// Words that `ip link add NAME ...` and `ip link set NAME ...` read as keywords where the plan
/// puts a device name (iproute2's `iplink_parse`, which compares these exactly).
const IP_LINK_KEYWORDS: [&str; 32] = [
    "up",
    "down",
    "name",
    "index",
    "mtu",
    "xdpgeneric",
    "xdpdrv",
    "xdpoffload",
    "xdp",
    "netns",
    "multicast",
    "allmulticast",
    "promisc",
    "trailers",
    "arp",
    "carrier",
    "vf",
    "vrf",
    "group",
    "mode",
    "state",
    "protodown",
    "protodown_reason",
    "gso_max_size",
    "gso_max_segs",
    "gro_max_size",
    "gso_ipv4_max_size",
    "gro_ipv4_max_size",
    "parentdev",
    "dev",
    "brd",
    "qlen",
];

/// Keywords `iplink_parse` also takes abbreviated (its `matches()`): every prefix of these is
/// a keyword too, so `br` means `broadcast` and `t` means `txqueuelen`.
const IP_LINK_ABBREVIATED: [&str; 16] = [
    "link",
    "address",
    "broadcast",
    "txqueuelen",
    "txqlen",
    "master",
    "nomaster",
    "dynamic",
    "type",
    "alias",
    "numtxqueues",
    "numrxqueues",
    "addrgenmode",
    "link-netns",
    "link-netnsid",
    "help",
];

/// The `ip link` keyword that `name` would be read as, if any.
pub fn ip_keyword(name: &str) -> Option<&'static str> {
    IP_LINK_KEYWORDS
        .iter()
        .find(|k| **k == name)
        .or_else(|| {
            IP_LINK_ABBREVIATED
                .iter()
                .find(|k| !name.is_empty() && k.starts_with(name))
        })
        .copied()
}

struct Validator<'a> {
    map: &'a SourceMap,
    problems: Vec<Problem>,
    rules: Rules,
}

/// Which rules a lab file is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rules {
    /// Every rule: a lab about to be brought up, planned or validated.
    New,
    /// A running lab's recorded copy: the rules that guard only new labs (underlay ranges,
    /// the vxlan MTU's ceiling) are left out, so a lab an older vxlab brought up can still
    /// be checked and taken down.
    Recorded,
}

impl Validator<'_> {
    fn at(&mut self, field: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            position: self.map.locate(field),
            field: field.to_string(),
            message: message.into(),
        });
    }

    fn at_key(&mut self, field: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            position: self.map.locate_key(field),
            field: field.to_string(),
            message: message.into(),
        });
    }

    /// A name made of `[a-z0-9-]`, starting with a letter or digit.
    fn name(&mut self, field: &str, value: &str, max: usize, key: bool) -> bool {
        let ok = is_name(value, max);
        if !ok {
            let msg = format!(
                "`{value}` is not a usable name: use 1 to {max} lowercase letters, digits and \
                 dashes, starting with a letter or digit"
            );
            if key {
                self.at_key(field, msg);
            } else {
                self.at(field, msg);
            }
        }
        ok
    }

    /// A device name that `ip` reads where a command names a device: an interface name that
    /// `ip link` cannot take for one of its keywords.
    fn device(&mut self, field: &str, value: &str) -> bool {
        if !self.ifname(field, value) {
            return false;
        }
        match ip_keyword(value) {
            None => true,
            Some(k) => {
                let what = if k == value {
                    format!("`{value}` is a keyword of `ip link`")
                } else {
                    format!("`ip link` reads `{value}` as its keyword `{k}`")
                };
                self.at(
                    field,
                    format!("{what}, so it cannot name a device; choose another name"),
                );
                false
            }
        }
    }

    /// A Linux interface name.
    fn ifname(&mut self, field: &str, value: &str) -> bool {
        if value.len() > IFNAMSIZ {
            self.at(
                field,
                format!(
                    "`{value}` is {} bytes long; Linux interface names hold at most {IFNAMSIZ}",
                    value.len()
                ),
            );
            return false;
        }
        if value.starts_with('-') {
            self.at(
                field,
                format!("`{value}` starts with `-`, which commands would read as an option"),
            );
            return false;
        }
        // `all` and `default` name the kernel's per-interface settings (`conf/all`), which no
        // link may take; `lo` is the loopback every namespace and host already has.
        let reserved = match value {
            "lo" => Some("the loopback interface every namespace already has"),
            "all" | "default" => Some("reserved by the kernel for its per-interface settings"),
            _ => None,
        };
        if let Some(why) = reserved {
            self.at(
                field,
                format!(
                    "`{value}` cannot name an interface here: it is {why}; choose another name"
                ),
            );
            return false;
        }
        let ok = !value.is_empty()
            && value != "."
            && value != ".."
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !ok {
            self.at(
                field,
                format!("`{value}` is not a usable interface name: use letters, digits, `-`, `_` and `.`"),
            );
        }
        ok
    }

    fn ip(&mut self, field: &str, value: &str) -> Option<IpAddr> {
        match value.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.at(
                    field,
                    format!("`{value}` is not an IP address (like 192.168.10.2 or fd00::2)"),
                );
                None
            }
        }
    }

    fn prefix(&mut self, field: &str, value: &str, example: &str) -> Option<IpNet> {
        match value.parse::<IpNet>() {
            Ok(net) => Some(net),
            Err(_) => {
                self.at(
                    field,
                    format!("`{value}` is not an address with a prefix length (like {example})"),
                );
                None
            }
        }
    }

    fn range(&mut self, field: &str, value: i64, lo: i64, hi: i64, why: &str) -> Option<i64> {
        if (lo..=hi).contains(&value) {
            Some(value)
        } else {
            self.at(field, format!("{value} is outside {lo}..{hi} ({why})"));
            None
        }
    }
}

/// Validates a parsed lab file.
pub fn validate(raw: RawLab, map: &SourceMap, rules: Rules) -> Result<Lab, Vec<Problem>> {
    let mut v = Validator {
        map,
        problems: Vec::new(),
        rules,
    };
    v.name("name", &raw.name, MAX_LAB_NAME, false);
    let driver = match raw.driver.as_str() {
        "netns" => DriverKind::Netns,
        "libvirt" => DriverKind::Libvirt,
        other => {
            v.at(
                "driver",
                format!("`{other}` is not a driver; use `netns` or `libvirt`"),
            );
            DriverKind::Netns
        }
    };
    let underlay = underlay(&mut v, &raw);
    let libvirt = libvirt_settings(&mut v, raw.libvirt.as_ref());
    let guests = guests(&mut v, &raw, underlay.as_ref(), &libvirt_defaults(&raw));
    let known: HashSet<&str> = raw.guests.keys().map(String::as_str).collect();
    let vxlans = vxlans(&mut v, &raw.vxlans, underlay.as_ref(), &known);
    let checks = checks(&mut v, raw.checks.as_deref(), &known);
    let iproute2 = iproute2_settings(&mut v, raw.iproute2.as_ref());
    let workshop = workshop_settings(&mut v, raw.workshop.as_ref(), underlay.as_ref());

    match underlay {
        Some(underlay) if v.problems.is_empty() => Ok(Lab {
            name: raw.name,
            driver,
            underlay,
            guests,
            vxlans,
            checks,
            libvirt,
            iproute2,
            instance: None,
            workshop,
        }),
        _ => Err(v.problems),
    }
}

fn underlay(v: &mut Validator, raw: &RawLab) -> Option<Underlay> {
    let u = &raw.underlay;
    v.device("underlay.bridge", &u.bridge);
    let interface = u
        .interface
        .clone()
        .unwrap_or_else(|| defaults::INTERFACE.into());
    v.device("underlay.interface", &interface);
    let subnet = v.prefix("underlay.subnet", &u.subnet, "192.168.10.0/24")?;
    if subnet.addr() != subnet.network() {
        v.at(
            "underlay.subnet",
            format!(
                "`{subnet}` has host bits set; the subnet is {}",
                subnet.trunc()
            ),
        );
        return None;
    }
    if v.rules == Rules::New && !defaults::underlay_range(subnet) {
        v.at("underlay.subnet", defaults::not_an_underlay_range(subnet));
        return None;
    }
    let max_len = if subnet.addr().is_ipv4() { 29 } else { 125 };
    if subnet.prefix_len() > max_len {
        v.at(
            "underlay.subnet",
            format!(
                "/{} is too small for a lab; use /{max_len} or larger",
                subnet.prefix_len()
            ),
        );
        return None;
    }
    let gateway = match &u.gateway {
        None => first_host(subnet),
        Some(g) => {
            let ip = v.ip("underlay.gateway", g)?;
            host_in(v, "underlay.gateway", ip, subnet);
            ip
        }
    };
    Some(Underlay {
        bridge: u.bridge.clone(),
        subnet,
        gateway,
        interface,
    })
}

/// `workshop:`: a pool of the underlay's family with room for more than one underlay.
fn workshop_settings(
    v: &mut Validator,
    raw: Option<&RawWorkshop>,
    underlay: Option<&Underlay>,
) -> Workshop {
    let Some(text) = raw.and_then(|w| w.pool.as_deref()) else {
        return Workshop::default();
    };
    let Some(pool) = v.prefix("workshop.pool", text, "10.100.0.0/16") else {
        return Workshop::default();
    };
    if pool.addr() != pool.network() {
        v.at(
            "workshop.pool",
            format!("`{pool}` has host bits set; the pool is {}", pool.trunc()),
        );
    } else if v.rules == Rules::New && !defaults::underlay_range(pool) {
        v.at("workshop.pool", defaults::not_an_underlay_range(pool));
    } else if let Some(u) = underlay {
        if pool.addr().is_ipv4() != u.subnet.addr().is_ipv4() {
            v.at(
                "workshop.pool",
                format!(
                    "the pool {pool} and the underlay {} are of different address families",
                    u.subnet
                ),
            );
        } else if pool.prefix_len() >= u.subnet.prefix_len() {
            v.at(
                "workshop.pool",
                format!(
                    "each copy takes a /{} like the underlay, so the pool must be shorter than \
                     /{}",
                    u.subnet.prefix_len(),
                    u.subnet.prefix_len()
                ),
            );
        }
    }
    Workshop { pool: Some(pool) }
}

/// The first address of `subnet` a host may take: past the network address, which IPv6 keeps
/// for the subnet-router anycast address (ipnet's `hosts()` yields it for IPv6).
fn first_host(subnet: IpNet) -> IpAddr {
    subnet
        .hosts()
        .find(|a| *a != subnet.network())
        .unwrap_or_else(|| subnet.network())
}

/// Checks that `ip` is a usable host address of `subnet`.
fn host_in(v: &mut Validator, field: &str, ip: IpAddr, subnet: IpNet) -> bool {
    if !subnet.contains(&ip) {
        v.at(
            field,
            format!("{ip} is outside the underlay subnet {subnet}"),
        );
        return false;
    }
    if ip == subnet.network() || (ip.is_ipv4() && ip == subnet.broadcast()) {
        v.at(
            field,
            format!("{ip} is the network or broadcast address of {subnet}, not a host address"),
        );
        return false;
    }
    true
}

struct Sizing {
    memory: u64,
    vcpus: u64,
}

fn libvirt_defaults(raw: &RawLab) -> Sizing {
    let l = raw.libvirt.as_ref();
    Sizing {
        memory: l.and_then(|l| l.memory).unwrap_or(defaults::MEMORY_MIB),
        vcpus: l.and_then(|l| l.vcpus).unwrap_or(defaults::VCPUS),
    }
}

fn sizing(v: &mut Validator, path: &str, memory: u64, vcpus: u64) {
    if !(128..=65536).contains(&memory) {
        v.at(
            &join_key(path, "memory"),
            format!("{memory} MiB is outside 128..65536"),
        );
    }
    if !(1..=64).contains(&vcpus) {
        v.at(
            &join_key(path, "vcpus"),
            format!("{vcpus} is outside 1..64"),
        );
    }
}

fn libvirt_settings(v: &mut Validator, raw: Option<&RawLibvirt>) -> LibvirtSettings {
    let uri = raw
        .and_then(|l| l.uri.clone())
        .unwrap_or_else(|| defaults::LIBVIRT_URI.into());
    if uri.is_empty() || uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        v.at("libvirt.uri", format!("`{uri}` is not a libvirt URI"));
    }
    let image = raw
        .and_then(|l| l.image.clone())
        .unwrap_or_else(|| defaults::IMAGE.into());
    if image.is_empty() || image.chars().any(char::is_control) {
        v.at("libvirt.image", "give a qcow2 path or an image name");
    }
    let accel = match raw.and_then(|l| l.accel.as_deref()).unwrap_or("auto") {
        "auto" => Accel::Auto,
        "kvm" => Accel::Kvm,
        "tcg" => Accel::Tcg,
        other => {
            v.at(
                "libvirt.accel",
                format!("`{other}` is not an accelerator; use `auto`, `kvm` or `tcg`"),
            );
            Accel::Auto
        }
    };
    if let Some(l) = raw {
        sizing(
            v,
            "libvirt",
            l.memory.unwrap_or(defaults::MEMORY_MIB),
            l.vcpus.unwrap_or(defaults::VCPUS),
        );
    }
    LibvirtSettings { uri, image, accel }
}

/// Tarball names vxlab can unpack.
const TARBALLS: [&str; 6] = [".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tar"];

fn iproute2_settings(v: &mut Validator, raw: Option<&RawIproute2>) -> Iproute2Settings {
    let build = match raw.and_then(|r| r.build.as_deref()).unwrap_or("auto") {
        "auto" => BuildMode::Auto,
        "always" => BuildMode::Always,
        "never" => BuildMode::Never,
        other => {
            v.at(
                "iproute2.build",
                format!("`{other}` is not a build mode; use `auto`, `always` or `never`"),
            );
            BuildMode::Auto
        }
    };
    let reference = raw.and_then(|r| r.reference.clone());
    let source = raw.and_then(|r| r.source.as_deref()).and_then(|s| {
        let is_url = s.contains("://") || s.starts_with("git@");
        if is_url {
            // A URL reaches a shell in the guest: only characters URLs need, no quotes or
            // spaces, and no leading dash that git could take for an option.
            let ok = !s.starts_with('-')
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._~:/@%+=,-".contains(&b));
            if !ok {
                v.at(
                    "iproute2.source",
                    format!("`{s}` is not a git URL vxlab can pass on safely"),
                );
                return None;
            }
            return Some(Source::Git {
                url: s.to_string(),
                reference: reference.clone(),
            });
        }
        if s.is_empty() || s.chars().any(char::is_control) {
            v.at(
                "iproute2.source",
                "give the path of an iproute2 tarball or a git URL",
            );
            return None;
        }
        if !TARBALLS.iter().any(|x| s.ends_with(x)) {
            v.at(
                "iproute2.source",
                format!(
                    "`{s}` is neither a git URL nor a tarball ({})",
                    TARBALLS.join(", ")
                ),
            );
            return None;
        }
        Some(Source::Tarball(s.into()))
    });
    if let Some(r) = &reference {
        let ok = !r.is_empty()
            && !r.starts_with('-')
            && r.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b));
        if !ok {
            v.at(
                "iproute2.ref",
                format!("`{r}` is not a branch or tag name vxlab can pass on safely"),
            );
        }
        if matches!(source, Some(Source::Tarball(_))) {
            v.at(
                "iproute2.ref",
                "`ref` goes with a git URL, not with a tarball",
            );
        }
    }
    let cflags = raw.and_then(|r| r.cflags.clone());
    if let Some(c) = &cflags {
        // Words for make's command line in a guest's shell: options only, no quoting needed.
        let ok = !c.trim().is_empty()
            && c.split_whitespace().all(|w| {
                w.starts_with('-')
                    && w.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_=.,+".contains(&b))
            });
        if !ok {
            v.at(
                "iproute2.cflags",
                format!("`{c}` is not a list of compiler options like `-O0 -pipe`"),
            );
        }
    }
    let has_source = raw.and_then(|r| r.source.as_ref()).is_some();
    if build == BuildMode::Always && !has_source {
        v.at(
            "iproute2.build",
            "`build: always` needs `source:` (an iproute2 tarball or a git URL)",
        );
    }
    Iproute2Settings {
        build,
        source,
        cflags,
        source_at: v.map.locate("iproute2.source"),
    }
}

fn guests(
    v: &mut Validator,
    raw: &RawLab,
    underlay: Option<&Underlay>,
    defaults: &Sizing,
) -> Vec<Guest> {
    if raw.guests.is_empty() {
        v.at("guests", "a lab needs at least one guest");
    }
    if raw.guests.len() > MAX_GUESTS {
        v.at(
            "guests",
            format!(
                "{} guests is more than the {MAX_GUESTS} a lab can hold",
                raw.guests.len()
            ),
        );
    }
    let mut seen: HashMap<IpAddr, String> = HashMap::new();
    let mut out = Vec::new();
    for (name, g) in &raw.guests {
        let path = join_key("guests", name);
        v.name(&path, name, MAX_GUEST_NAME, true);
        let RawGuest {
            address,
            memory,
            vcpus,
        } = g;
        let memory = memory.unwrap_or(defaults.memory);
        let vcpus = vcpus.unwrap_or(defaults.vcpus);
        if g.memory.is_some() || g.vcpus.is_some() {
            sizing(v, &path, memory, vcpus);
        }
        let field = join_key(&path, "address");
        let Some(ip) = v.ip(&field, address) else {
            continue;
        };
        if let Some(u) = underlay {
            if host_in(v, &field, ip, u.subnet) && ip == u.gateway {
                v.at(
                    &field,
                    format!("{ip} is the bridge's own address (the gateway); pick another address"),
                );
            }
        }
        if let Some(other) = seen.insert(ip, name.clone()) {
            v.at(&field, format!("{ip} is already {other}'s address"));
        }
        out.push(Guest {
            name: name.clone(),
            address: ip,
            memory_mib: memory,
            vcpus,
        });
    }
    out
}

fn vxlans(
    v: &mut Validator,
    raw: &[RawVxlan],
    underlay: Option<&Underlay>,
    known: &HashSet<&str>,
) -> Vec<Vxlan> {
    if raw.is_empty() {
        v.at("vxlans", "a lab needs at least one vxlan");
    }
    let mut names = HashSet::new();
    let mut vnis = HashMap::new();
    let mut out: Vec<Vxlan> = Vec::new();
    // What each earlier vxlan's addresses say, as far as they read: the checks across
    // vxlans are made on the raw values, so that a mistake elsewhere in one vxlan (its MTU,
    // say) does not hide a VNI or a subnet it shares with another.
    let mut earlier: Vec<(&str, Vec<(&str, IpNet)>)> = Vec::new();
    for (i, x) in raw.iter().enumerate() {
        let path = join_index("vxlans", i);
        // Said whatever else is wrong with either vxlan.
        if !names.insert(x.name.clone()) {
            v.at(
                &join_key(&path, "name"),
                format!("another vxlan is already named `{}`", x.name),
            );
        }
        if let Some(other) = vnis.insert(x.vni, x.name.clone()) {
            v.at(
                &join_key(&path, "vni"),
                format!("VNI {} is already used by {other}", x.vni),
            );
        }
        let members: Vec<(&str, IpNet)> = x
            .addresses
            .iter()
            .filter_map(|(g, a)| Some((g.as_str(), a.parse().ok()?)))
            .collect();
        for (name, theirs) in &earlier {
            overlapping_overlays(v, &path, &members, name, theirs);
        }
        earlier.push((&x.name, members));
        if let Some(vx) = vxlan(v, &path, x, underlay, known) {
            out.push(vx);
        }
    }
    out
}

/// Two vxlans that share a guest must not share overlay address space: the guest could not
/// tell which device a destination is behind.
fn overlapping_overlays(
    v: &mut Validator,
    path: &str,
    ours: &[(&str, IpNet)],
    name: &str,
    theirs: &[(&str, IpNet)],
) {
    for (guest, a) in ours {
        for (_, b) in theirs.iter().filter(|(g, _)| g == guest) {
            let (na, nb) = (a.trunc(), b.trunc());
            if na.contains(&nb.network()) || nb.contains(&na.network()) {
                v.at(
                    &join_key(&join_key(path, "addresses"), guest),
                    format!("{a} overlaps {name}'s {b} on {guest}; give each vxlan its own subnet"),
                );
            }
        }
    }
}

fn vxlan(
    v: &mut Validator,
    path: &str,
    x: &RawVxlan,
    underlay: Option<&Underlay>,
    known: &HashSet<&str>,
) -> Option<Vxlan> {
    let f = |k: &str| join_key(path, k);
    v.device(&f("name"), &x.name);
    if underlay.is_some_and(|u| u.interface == x.name) {
        v.at(
            &f("name"),
            format!("`{}` is the underlay interface's name", x.name),
        );
    }
    let vni = v.range(
        &f("vni"),
        x.vni,
        1,
        16_777_215,
        "a VXLAN network identifier has 24 bits and 0 is reserved",
    );
    let port = v.range(
        &f("port"),
        x.port.unwrap_or(i64::from(defaults::VXLAN_PORT)),
        1,
        65535,
        "a UDP port",
    );
    // The most a vxlan device can carry: the underlay's MTU less the outer headers (with an
    // underlay not yet known, an IPv4 one).
    let (max_mtu, why) = match v.rules {
        Rules::New => {
            let outer = underlay.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |u| u.subnet.addr());
            let headroom = crate::converge::vxlan_headroom(outer);
            (
                crate::converge::UNDERLAY_MTU - headroom,
                format!(
                    "the underlay's MTU is {}, and VXLAN's outer headers take {headroom} of it",
                    crate::converge::UNDERLAY_MTU
                ),
            )
        }
        Rules::Recorded => (65535, "an Ethernet MTU".to_string()),
    };
    let mtu = x
        .mtu
        .map(|m| v.range(&f("mtu"), m, 68, i64::from(max_mtu), &why));
    let dev = x
        .dev
        .clone()
        .or_else(|| underlay.map(|u| u.interface.clone()))
        .unwrap_or_else(|| defaults::INTERFACE.into());
    // Without `dev:` it is the underlay interface, judged where that is written.
    let dev_ok = x.dev.as_ref().is_none_or(|d| v.device(&f("dev"), d));
    if dev_ok {
        if let Some(u) = underlay.filter(|u| u.interface != dev) {
            v.at(
                &f("dev"),
                format!(
                    "guests have one underlay interface, `{}`; dev must name it",
                    u.interface
                ),
            );
        }
    }
    let static_fdb = match x.fdb.as_deref().unwrap_or("learned") {
        "learned" => false,
        "static" => true,
        other => {
            v.at(
                &f("fdb"),
                format!("`{other}` is not an FDB mode; use `learned` or `static`"),
            );
            false
        }
    };
    // Every check runs before giving up on this vxlan, so all its problems show at once.
    let flood = flood(v, path, x, underlay);
    let members = members(v, path, x, underlay, known);
    Some(Vxlan {
        name: x.name.clone(),
        vni: vni? as u32,
        flood: flood?,
        dev,
        port: port? as u16,
        learning: x.learning.unwrap_or(true),
        static_fdb,
        mtu: match mtu {
            Some(m) => Some(m? as u32),
            None => None,
        },
        members,
    })
}

fn flood(
    v: &mut Validator,
    path: &str,
    x: &RawVxlan,
    underlay: Option<&Underlay>,
) -> Option<Flood> {
    let f = |k: &str| join_key(path, k);
    match (&x.group, &x.remotes) {
        (Some(_), Some(_)) => {
            v.at(
                &f("remotes"),
                "use either `group` (multicast) or `remotes` (head-end replication), not both",
            );
            None
        }
        (None, None) => {
            v.at(
                path,
                "a vxlan needs `group: <multicast address>` or `remotes: auto` to reach its peers",
            );
            None
        }
        (None, Some(r)) => {
            if r.text() == Some("auto") {
                Some(Flood::HeadEnd)
            } else {
                v.at(
                    &f("remotes"),
                    "only `remotes: auto` is supported: one copy to every other member",
                );
                None
            }
        }
        (Some(g), None) => {
            let ip = v.ip(&f("group"), g)?;
            if let Some(why) = group_problem(ip) {
                v.at(&f("group"), why);
                return None;
            }
            if let Some(u) = underlay {
                if u.subnet.addr().is_ipv4() != ip.is_ipv4() {
                    v.at(
                        &f("group"),
                        format!(
                            "{ip} and the underlay subnet {} are of different address families",
                            u.subnet
                        ),
                    );
                    return None;
                }
            }
            Some(Flood::Group(ip))
        }
    }
}

/// Why `ip` cannot be a VXLAN multicast group, if it cannot.
pub fn group_problem(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(a) if !a.is_multicast() => Some(format!(
            "{ip} is not a multicast address; groups are in 224.0.0.0/4 (like 239.1.1.1)"
        )),
        IpAddr::V4(a) if a.octets()[..3] == [224, 0, 0] => Some(format!(
            "{ip} is in 224.0.0.0/24, reserved for link-local protocols; use e.g. 239.1.1.1"
        )),
        IpAddr::V6(a) if !a.is_multicast() => Some(format!(
            "{ip} is not a multicast address; IPv6 groups are in ff00::/8 (like ff05::42)"
        )),
        IpAddr::V6(a) if matches!(a.segments()[0] & 0x000f, 0..=2) => Some(format!(
            "{ip} has interface- or link-local scope; use a wider scope such as ff05::42"
        )),
        _ => None,
    }
}

fn members(
    v: &mut Validator,
    path: &str,
    x: &RawVxlan,
    underlay: Option<&Underlay>,
    known: &HashSet<&str>,
) -> Vec<Member> {
    let apath = join_key(path, "addresses");
    if x.addresses.is_empty() {
        v.at(&apath, "list each member guest with its overlay address");
    }
    let macs = x.macs.clone().unwrap_or_default();
    let mut first: Option<(String, IpNet)> = None;
    let mut seen_ip: HashMap<IpAddr, String> = HashMap::new();
    let mut seen_mac: HashMap<Mac, String> = HashMap::new();
    let mut out = Vec::new();
    for (guest, addr) in &x.addresses {
        let field = join_key(&apath, guest);
        if !known.contains(guest.as_str()) {
            v.at_key(&field, format!("there is no guest named `{guest}`"));
            continue;
        }
        let mac = match macs.get(guest) {
            None => None,
            Some(text) => mac(
                v,
                &join_key(&join_key(path, "macs"), guest),
                text,
                guest,
                &mut seen_mac,
            ),
        };
        let Some(net) = v.prefix(&field, addr, "192.168.42.2/24") else {
            continue;
        };
        if net.addr() == net.network() || (net.addr().is_ipv4() && net.addr() == net.broadcast()) {
            v.at(
                &field,
                format!(
                    "{} is the network or broadcast address of {}",
                    net.addr(),
                    net.trunc()
                ),
            );
            continue;
        }
        if let Some(u) = underlay {
            let t = net.trunc();
            if t.contains(&u.subnet.network()) || u.subnet.contains(&t.network()) {
                v.at(
                    &field,
                    format!("{net} overlaps the underlay subnet {}", u.subnet),
                );
                continue;
            }
        }
        match &first {
            None => first = Some((guest.clone(), net)),
            Some((g0, n0)) if n0.addr().is_ipv4() != net.addr().is_ipv4() => {
                v.at(
                    &field,
                    format!("{net} mixes address families with {g0}'s {n0} in one vxlan"),
                );
                continue;
            }
            Some((g0, n0)) if n0.trunc() != net.trunc() => {
                v.at(
                    &field,
                    format!(
                        "{net} is not in {g0}'s subnet {}; members of one vxlan share one subnet",
                        n0.trunc()
                    ),
                );
                continue;
            }
            _ => {}
        }
        if let Some(other) = seen_ip.insert(net.addr(), guest.clone()) {
            v.at(
                &field,
                format!("{} is already {other}'s address", net.addr()),
            );
        }
        out.push(Member {
            guest: guest.clone(),
            address: net,
            mac,
        });
    }
    for guest in macs.keys().filter(|g| !x.addresses.contains_key(*g)) {
        v.at_key(
            &join_key(&join_key(path, "macs"), guest),
            format!("`{guest}` is not a member of this vxlan (it has no address in it)"),
        );
    }
    out
}

fn mac(
    v: &mut Validator,
    field: &str,
    text: &str,
    guest: &str,
    seen: &mut HashMap<Mac, String>,
) -> Option<Mac> {
    let m: Mac = match text.parse() {
        Ok(m) => m,
        Err(e) => {
            v.at(field, e);
            return None;
        }
    };
    if m.is_zero() || m.is_multicast() {
        v.at(
            field,
            format!("{m} is not a unicast MAC (the lowest bit of the first byte must be 0)"),
        );
        return None;
    }
    if let Some(other) = seen.insert(m, guest.to_string()) {
        v.at(field, format!("{m} is already {other}'s MAC in this vxlan"));
    }
    Some(m)
}

fn checks(v: &mut Validator, raw: Option<&[RawCheck]>, known: &HashSet<&str>) -> Vec<Check> {
    let Some(raw) = raw else {
        return vec![Check::PingAll];
    };
    let mut out = Vec::new();
    for (i, c) in raw.iter().enumerate() {
        let path = join_key(&join_index("checks", i), "ping");
        if let Some(check) = ping(v, &path, &c.ping, known) {
            out.push(check);
        }
    }
    out
}

fn ping(v: &mut Validator, path: &str, value: &Node, known: &HashSet<&str>) -> Option<Check> {
    if value.text() == Some("all") {
        return Some(Check::PingAll);
    }
    let Some(map) = value.entries() else {
        v.at(
            path,
            "use `ping: all` or `ping: { from: GUEST, to: ADDRESS, expect: success|fail }`",
        );
        return None;
    };
    let text = |k: &str| value.get(k).and_then(Node::text).map(str::to_string);
    for (key, _) in map {
        let k = key.text.as_str();
        if !["from", "to", "expect"].contains(&k) {
            v.at_key(
                &join_key(path, k),
                format!("unknown field `{k}`, expected `from`, `to` or `expect`"),
            );
        }
    }
    let from = match text("from") {
        Some(g) if known.contains(g.as_str()) => Some(g),
        Some(g) => {
            v.at(
                &join_key(path, "from"),
                format!("there is no guest named `{g}`"),
            );
            None
        }
        None => {
            v.at(path, "missing `from: GUEST`");
            None
        }
    };
    let to = match text("to") {
        Some(t) => v.ip(&join_key(path, "to"), &t),
        None => {
            v.at(path, "missing `to: ADDRESS`");
            None
        }
    };
    let expect = match text("expect").as_deref() {
        None | Some("success") => Some(Expect::Success),
        Some("fail") => Some(Expect::Fail),
        Some(other) => {
            v.at(
                &join_key(path, "expect"),
                format!("`{other}` is not an outcome; use `success` or `fail`"),
            );
            None
        }
    };
    Some(Check::Ping {
        from: from?,
        to: to?,
        expect: expect?,
    })
}

#[cfg(test)]
mod tests {
    use super::{first_host, ip_keyword};

    #[test]
    fn the_bridge_takes_the_first_host_address_not_the_ipv6_anycast_one() {
        assert_eq!(
            first_host("fd00:bb6::/64".parse().unwrap()).to_string(),
            "fd00:bb6::1"
        );
        assert_eq!(
            first_host("192.168.10.0/24".parse().unwrap()).to_string(),
            "192.168.10.1"
        );
    }

    #[test]
    fn ip_link_keywords_and_their_abbreviations_cannot_name_devices() {
        assert_eq!(ip_keyword("help"), Some("help"));
        assert_eq!(ip_keyword("up"), Some("up"));
        assert_eq!(ip_keyword("dev"), Some("dev"));
        assert_eq!(ip_keyword("br"), Some("broadcast"));
        assert_eq!(ip_keyword("t"), Some("txqueuelen"));
        assert_eq!(ip_keyword("link-net"), Some("link-netns"));
        for fine in ["vxlan0", "eth0", "vx42", "upper", "devs", "typed"] {
            assert_eq!(ip_keyword(fine), None, "{fine}");
        }
    }
}
