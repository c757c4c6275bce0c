//! Workshop mode: many copies of one lab on one host. A copy (an instance) gets its own lab
//! name, bridge name and underlay subnet, derived from the lab and the instance, so no two
//! copies collide; everything inside the guests (overlay addresses, VNIs, groups) stays as the
//! lab file says, so every student sees the same lab.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::Lab;

/// Longest instance name.
pub const MAX_INSTANCE_NAME: usize = 6;
/// Longest lab name (it goes into namespace and domain names).
const MAX_LAB_NAME: usize = 24;
/// Linux interface names hold at most 15 bytes.
const IFNAMSIZ: usize = super::defaults::MAX_IFNAME;

/// Which copy of a lab this is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The lab's own name.
    pub base: String,
    /// The instance's name.
    pub name: String,
    /// Its number, 1..=255.
    pub index: u8,
    /// The underlay subnet it was given from the workshop pool; absent in copies recorded
    /// before pools, whose underlay is `10.index.c.d`.
    #[serde(default)]
    pub underlay: Option<IpNet>,
}

/// Whether `name` can name an instance: 1 to 6 lowercase letters and digits.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_INSTANCE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The index a numeric instance name asks for.
pub fn index_of(name: &str) -> Option<u8> {
    name.parse::<u8>().ok().filter(|&i| i > 0)
}

/// `addr` moved into instance `index`'s underlay as copies were numbered before workshop
/// pools: IPv4 `a.b.c.d` becomes `10.index.c.d`; IPv6 gets `index` as its fourth group.
fn moved(addr: IpAddr, index: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let o = a.octets();
            IpAddr::V4(Ipv4Addr::new(10, index, o[2], o[3]))
        }
        IpAddr::V6(a) => {
            let mut s = a.segments();
            s[3] = u16::from(index);
            IpAddr::V6(Ipv6Addr::from(s))
        }
    }
}

/// The bridge of an instance: `<bridge>-<instance>`, the bridge's name cut to fit 15 bytes.
pub fn bridge_name(bridge: &str, instance: &str) -> String {
    let room = IFNAMSIZ - 1 - instance.len();
    let head: String = bridge.chars().take(room).collect();
    format!("{head}-{instance}")
}

/// Lab `lab` as instance `name` number `index`, on `underlay` (from [`crate::workshop`]);
/// without one, as copies were numbered before pools.
pub fn derive(lab: &Lab, name: &str, index: u8, underlay: Option<IpNet>) -> Result<Lab, String> {
    if !valid_name(name) {
        return Err(format!(
            "`{name}` is not an instance name: use 1 to {MAX_INSTANCE_NAME} lowercase letters and digits"
        ));
    }
    if index == 0 {
        return Err("instance numbers start at 1".into());
    }
    let full = format!("{}-{name}", lab.name);
    if full.len() > MAX_LAB_NAME {
        return Err(format!(
            "lab {} as instance {name} would be named {full}, longer than {MAX_LAB_NAME}: \
             shorten the lab's name or the instance's",
            lab.name
        ));
    }
    let subnet = lab.underlay.subnet;
    let moved = |addr| match underlay {
        Some(to) => crate::workshop::rebase(addr, subnet, to),
        None => moved(addr, index),
    };
    match underlay {
        Some(u) if u.prefix_len() != subnet.prefix_len() => {
            return Err(format!(
                "instance {name}'s underlay {u} is not a /{} like the lab's {subnet}",
                subnet.prefix_len()
            ));
        }
        Some(_) => {}
        None => {
            let fits = match subnet {
                IpNet::V4(n) => n.prefix_len() >= 16,
                IpNet::V6(n) => (48..=64).contains(&n.prefix_len()),
            };
            if !fits {
                return Err(format!(
                    "copies recorded before workshop pools number the underlay inside 10.N.0.0/16 \
                     (IPv4) or in the fourth group (IPv6): the underlay {subnet} must be a /16 \
                     or longer (IPv6: /48 to /64)"
                ));
            }
        }
    }
    let mut out = lab.clone();
    out.name = full;
    out.underlay.bridge = bridge_name(&lab.underlay.bridge, name);
    out.underlay.subnet = IpNet::new(moved(subnet.addr()), subnet.prefix_len())
        .map_err(|e| e.to_string())?
        .trunc();
    out.underlay.gateway = moved(lab.underlay.gateway);
    for g in &mut out.guests {
        g.address = moved(g.address);
    }
    for v in &out.vxlans {
        for m in &v.members {
            if m.address.contains(&out.underlay.subnet.network())
                || out.underlay.subnet.contains(&m.address.network())
            {
                return Err(format!(
                    "instance {name}'s underlay {} overlaps {}'s overlay {} in {}: use another \
                     instance number",
                    out.underlay.subnet, m.guest, m.address, v.name
                ));
            }
        }
    }
    out.instance = Some(Instance {
        base: lab.name.clone(),
        name: name.to_string(),
        index,
        underlay,
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Lab {
        let path = format!("{}/labs/two-netns.yaml", env!("CARGO_MANIFEST_DIR"));
        crate::lab::load(std::path::Path::new(&path)).unwrap()
    }

    #[test]
    fn instances_get_their_own_names_bridge_and_subnet_and_keep_the_overlay() {
        let lab = seed();
        let a = derive(&lab, "7", 7, None).unwrap();
        assert_eq!(a.name, "two-netns-7");
        assert_eq!(a.underlay.bridge, "vxbr-seed-7");
        assert_eq!(a.underlay.subnet.to_string(), "10.7.10.0/24");
        assert_eq!(a.underlay.gateway.to_string(), "10.7.10.1");
        assert_eq!(a.guests[1].address.to_string(), "10.7.10.3");
        assert_eq!(a.vxlans, lab.vxlans);
        let b = derive(&lab, "30", 30, None).unwrap();
        assert_ne!(a.underlay.subnet, b.underlay.subnet);
        assert_ne!(
            crate::plan::plan(&a).guests[0].host_link,
            crate::plan::plan(&b).guests[0].host_link
        );
    }

    #[test]
    fn names_stay_within_the_interface_and_lab_limits() {
        assert_eq!(bridge_name("vxbr-a-long-name", "abcdef"), "vxbr-a-l-abcdef");
        assert!(bridge_name("vxbr-a-long-name", "abcdef").len() <= 15);
        let mut lab = seed();
        lab.name = "a-twenty-char-labxyz".into();
        assert!(derive(&lab, "abcdef", 1, None)
            .unwrap_err()
            .contains("longer than 24"));
        assert!(derive(&seed(), "Bad!", 1, None).is_err());
    }
}
