//! The fallback for an `ip` without `-j` (iproute2 before 4.14): the same values read from the
//! text forms. Used only for such guests; everywhere else vxlab reads JSON.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::{FdbEntry, GroupMembership, Link, Neighbour, Route, VxlanParams, ROUTE_TYPES};

/// The device name of a header line such as `3: eth0@if12: <...> mtu 1500 ...`.
fn header_name(line: &str) -> Option<&str> {
    let (index, rest) = line.split_once(": ")?;
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let name = rest.split(':').next()?.trim();
    Some(name.split('@').next().unwrap_or(name))
}

/// The word after `key` in `words`.
fn after<'a>(words: &[&'a str], key: &str) -> Option<&'a str> {
    words
        .iter()
        .position(|w| *w == key)
        .and_then(|i| words.get(i + 1).copied())
}

/// `ip -d link show`.
pub fn links(text: &str) -> Vec<Link> {
    let mut out: Vec<Link> = Vec::new();
    for line in text.lines() {
        if let Some(name) = header_name(line) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let flags = line
                .split_once('<')
                .and_then(|(_, r)| r.split_once('>'))
                .map(|(f, _)| f)
                .unwrap_or("");
            out.push(Link {
                name: name.to_string(),
                mac: None,
                mtu: after(&words, "mtu")
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(0),
                up: flags.split(',').any(|f| f == "UP"),
                arp: !flags.split(',').any(|f| f == "NOARP"),
                vxlan: None,
                addrgenmode: None,
                master: after(&words, "master").map(String::from),
                addresses: Vec::new(),
            });
            continue;
        }
        let Some(link) = out.last_mut() else { continue };
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(mode) = after(&words, "addrgenmode") {
            link.addrgenmode = Some(mode.to_string());
        }
        match words.first() {
            Some(w) if w.starts_with("link/") => {
                link.mac = words.get(1).and_then(|m| m.parse().ok());
            }
            Some(&"vxlan") => {
                let Some(vni) = after(&words, "id").and_then(|v| v.parse().ok()) else {
                    continue;
                };
                link.vxlan = Some(VxlanParams {
                    vni,
                    group: after(&words, "group").and_then(|g| g.parse().ok()),
                    local: after(&words, "local").and_then(|l| l.parse().ok()),
                    dev: after(&words, "dev").map(String::from),
                    // Releases before `dstport` used the kernel's default then, 8472.
                    port: after(&words, "dstport")
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(8472),
                    learning: !words.contains(&"nolearning"),
                });
            }
            _ => {}
        }
    }
    out
}

/// `ip addr show`: addresses by device.
pub fn addresses(text: &str) -> BTreeMap<String, Vec<IpNet>> {
    let mut out: BTreeMap<String, Vec<IpNet>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(name) = header_name(line) {
            current = Some(name.to_string());
            out.entry(name.to_string()).or_default();
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if let (Some(dev), Some(&("inet" | "inet6")), Some(a)) =
            (&current, words.first(), words.get(1))
        {
            if let Ok(net) = a.parse::<IpNet>() {
                out.entry(dev.clone()).or_default().push(net);
            }
        }
    }
    out
}

/// `ip maddr show [dev DEV]`: the IP groups joined.
pub fn groups(text: &str) -> Vec<GroupMembership> {
    let mut out = Vec::new();
    let mut dev: Option<String> = None;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [index, name, ..]
                if index.ends_with(':')
                    && index[..index.len() - 1].bytes().all(|b| b.is_ascii_digit()) =>
            {
                dev = Some(name.to_string());
            }
            [family, addr, ..] if *family == "inet" || *family == "inet6" => {
                if let (Some(d), Ok(group)) = (&dev, addr.parse::<IpAddr>()) {
                    out.push(GroupMembership {
                        dev: d.clone(),
                        group,
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// `bridge fdb show dev DEV`.
pub fn fdb(text: &str) -> Vec<FdbEntry> {
    text.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            // A bridge's entries for its port, not the vxlan device's own.
            if words.contains(&"master") {
                return None;
            }
            Some(FdbEntry {
                mac: words.first()?.parse().ok()?,
                dst: after(&words, "dst").and_then(|d| d.parse().ok()),
                via: after(&words, "via").map(String::from),
                permanent: words.contains(&"permanent"),
            })
        })
        .collect()
}

/// `ip route show`: `[TYPE] DST [via GW] dev DEV [proto P] [scope S] [src SRC]`.
pub fn routes(text: &str) -> Vec<Route> {
    text.lines()
        .filter_map(|line| {
            let mut words: Vec<&str> = line.split_whitespace().collect();
            let kind = words.first().filter(|w| ROUTE_TYPES.contains(w)).copied();
            if kind.is_some() {
                words.remove(0);
            }
            let kind = kind.filter(|k| *k != "unicast").map(String::from);
            Some(Route {
                kind,
                dst: words.first()?.to_string(),
                gateway: after(&words, "via").and_then(|g| g.parse().ok()),
                dev: after(&words, "dev").map(String::from),
                protocol: after(&words, "proto").map(String::from),
                prefsrc: after(&words, "src").and_then(|g| g.parse().ok()),
                ipv6: false,
            })
        })
        .collect()
}

/// `ip neigh show dev DEV`: `ADDRESS [lladdr MAC] [router] STATE`.
pub fn neighbours(text: &str) -> Vec<Neighbour> {
    text.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            Some(Neighbour {
                dst: words.first()?.parse().ok()?,
                lladdr: after(&words, "lladdr").and_then(|m| m.parse().ok()),
                permanent: words.last() == Some(&"PERMANENT"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;
    use crate::observe;

    #[test]
    fn text_and_json_of_the_same_guest_read_the_same() {
        // Both recorded from vm-a of the seed lab on namespaces, at different runs: the
        // structure must agree, not the random veth MACs.
        let t = links(&fixture("link.txt"));
        let vx = t.iter().find(|l| l.name == "vxlan0").unwrap();
        let p = vx.vxlan.as_ref().unwrap();
        assert_eq!(p.vni, 42);
        assert_eq!(p.group, Some("239.1.1.1".parse().unwrap()));
        assert_eq!(p.dev.as_deref(), Some("eth0"));
        assert_eq!(p.port, 4789);
        assert!(p.learning && vx.up);
        assert_eq!(vx.mtu, 1450);
        assert_eq!(vx.mac.unwrap().to_string(), "02:ef:00:00:2a:01");
        assert!(t.iter().any(|l| l.name == "eth0"), "the @ifN suffix is cut");

        let j = observe::parse_links(&fixture("link.json")).unwrap();
        let jp = j.iter().find_map(|l| l.vxlan.clone()).unwrap();
        assert_eq!((jp.vni, jp.group, jp.port), (p.vni, p.group, p.port));

        let a = addresses(&fixture("addr.txt"));
        assert_eq!(a["vxlan0"][0].to_string(), "192.168.42.2/24");
        assert_eq!(a["eth0"][0].to_string(), "192.168.44.2/24");
        assert_eq!(a["lo"].len(), 2);

        let g = groups(&fixture("maddr.txt"));
        assert!(g
            .iter()
            .any(|m| m.dev == "eth0" && m.group.to_string() == "239.1.1.1"));
        assert!(g.iter().all(|m| m.dev == "eth0"));

        let f = fdb(&fixture("fdb.txt"));
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].dst, Some("192.168.44.3".parse().unwrap()));
        assert!(!f[0].permanent);
        assert!(f[1].mac.is_zero() && f[1].permanent);
        assert_eq!(f[1].via.as_deref(), Some("eth0"));
    }

    #[test]
    fn routes_read_the_same_from_text() {
        let r = routes("192.168.42.0/24 dev vxlan0 proto kernel scope link src 192.168.42.2 \ndefault via 192.168.10.1 dev eth0 \n");
        assert_eq!(r[0].dst, "192.168.42.0/24");
        assert_eq!(r[0].dev.as_deref(), Some("vxlan0"));
        assert_eq!(r[0].protocol.as_deref(), Some("kernel"));
        assert_eq!(r[0].prefsrc, Some("192.168.42.2".parse().unwrap()));
        assert_eq!(r[1].gateway, Some("192.168.10.1".parse().unwrap()));
        assert_eq!(r[1].prefix(), None, "default is no prefix of a subnet");
        let r = routes("blackhole 192.168.10.3 \nunicast 192.168.42.3 dev lo \n");
        assert_eq!(r[0].kind.as_deref(), Some("blackhole"));
        assert_eq!(r[0].prefix(), Some("192.168.10.3/32".parse().unwrap()));
        assert_eq!(
            (r[1].kind.as_deref(), r[1].dev.as_deref()),
            (None, Some("lo"))
        );
    }

    #[test]
    fn an_old_release_without_dstport_reads_the_default_port_and_learning_off() {
        let t = links(&fixture("link-3.10.txt"));
        let vx = t.iter().find(|l| l.name == "vxlan0").unwrap();
        let p = vx.vxlan.as_ref().unwrap();
        assert_eq!(p.port, 8472, "`port 32768 61000` is the source range");
        assert!(!p.learning);
        assert!(!vx.up);
    }
}
