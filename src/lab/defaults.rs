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
