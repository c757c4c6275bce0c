//! What a lab file may leave out, and the limits it must keep: defined once, here.

/// Each guest's underlay interface.
pub const INTERFACE: &str = "eth0";
/// The libvirt connection.
pub const LIBVIRT_URI: &str = "qemu:///system";
/// The guest image, by name in the image cache.
pub const IMAGE: &str = "debian-12";
/// Guest memory in MiB.
pub const MEMORY_MIB: u64 = 512;
/// Guest virtual CPUs.
pub const VCPUS: u64 = 1;
/// The VXLAN UDP port: IANA's, always given explicitly (the kernel's default is 8472).
pub const VXLAN_PORT: u16 = 4789;
/// Interface names: the kernel's IFNAMSIZ less its terminating zero.
pub const MAX_IFNAME: usize = 15;

/// The ranges an underlay (and a workshop pool) may take: private ranges (RFC 1918, the
/// shared 100.64.0.0/10, IPv6 unique local), benchmarking (198.18.0.0/15) and documentation
/// ones. The host routes an underlay into the lab's bridge, so a public range would hide
/// those addresses of the Internet from this host.
pub const UNDERLAY_RANGES: [&str; 10] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "198.18.0.0/15",
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "fc00::/7",
    "2001:db8::/32",
];

/// Whether `net` lies inside one of [`UNDERLAY_RANGES`].
pub fn underlay_range(net: ipnet::IpNet) -> bool {
    UNDERLAY_RANGES.iter().any(|r| {
        r.parse::<ipnet::IpNet>()
            .is_ok_and(|r| r.contains(&net.network()) && r.contains(&net.broadcast()))
    })
}

/// Why a range is refused as an underlay or pool, for messages.
pub fn not_an_underlay_range(net: ipnet::IpNet) -> String {
    format!(
        "{net} is a public range: the host would route it into the lab's bridge and lose those \
         addresses of the Internet; use a private range (10.0.0.0/8, 172.16.0.0/12, \
         192.168.0.0/16, fc00::/7) or a documentation one (192.0.2.0/24, 2001:db8::/32)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_documentation_ranges_are_underlays_public_ones_are_not() {
        for ok in [
            "192.168.10.0/24",
            "10.100.0.0/16",
            "fd00:10::/64",
            "192.0.2.0/24",
        ] {
            assert!(underlay_range(ok.parse().unwrap()), "{ok}");
        }
        for bad in [
            "8.8.8.0/24",
            "8.8.8.0/23",
            "192.168.0.0/15",
            "2a00::/64",
            "11.0.0.0/8",
        ] {
            assert!(!underlay_range(bad.parse().unwrap()), "{bad}");
        }
    }
}
