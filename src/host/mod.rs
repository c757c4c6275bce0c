//! Side effects on the host: child processes, netlink, sysctls. Everything here is an edge
//! the pure core never touches directly.

pub mod capture;
pub mod files;
pub mod icmp;
pub mod inventory;
pub mod lock;
pub mod neighbours;
pub mod netlink;
pub mod netns;
pub mod process;
pub mod sysctl;

use ipnet::IpNet;

/// The host side of a lab's underlay: its bridge and the host ends of guest links.
pub trait HostNetwork: Sync + Send {
    /// Creates (or reuses) the bridge with its address, up.
    fn ensure_bridge(&self, name: &str, address: IpNet) -> Result<(), netlink::NetlinkError>;
    /// Deletes a link; false when it was not there.
    fn delete_link(&self, name: &str) -> Result<bool, netlink::NetlinkError>;
    /// Deletes several links at once; returns how many there were.
    fn delete_links(&self, names: &[String]) -> Result<usize, netlink::NetlinkError>;
}

impl HostNetwork for netlink::Netlink {
    fn ensure_bridge(&self, name: &str, address: IpNet) -> Result<(), netlink::NetlinkError> {
        netlink::Netlink::ensure_bridge(self, name, address)
    }
    fn delete_link(&self, name: &str) -> Result<bool, netlink::NetlinkError> {
        netlink::Netlink::delete_link(self, name)
    }
    fn delete_links(&self, names: &[String]) -> Result<usize, netlink::NetlinkError> {
        netlink::Netlink::delete_links(self, names)
    }
}
