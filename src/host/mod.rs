//! Side effects on the host, behind one trait: [`Host`] is what the engine may do to this
//! machine (links, routes, kernel settings, captures). [`LocalHost`] does it for real; tests
//! give the engine a recording fake, so an engine test touches nothing on the host.

pub mod capture;
pub mod files;
pub mod icmp;
pub mod inventory;
pub mod lock;
pub mod neighbours;
pub mod netlink;
pub mod netns;
pub mod process;
pub mod spawn;
pub mod sysctl;

use std::io;
use std::time::Duration;

use ipnet::IpNet;

use crate::packet::Frame;

pub use netlink::NetlinkError;

/// A route of the host's main table, as far as the engine cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoute {
    /// Destination prefix.
    pub dst: IpNet,
    /// Outgoing device.
    pub dev: Option<String>,
}

/// Frames seen on a host link.
pub trait Frames: Send {
    /// The next frame, or `None` when none came within the poll time.
    fn next_frame(&mut self) -> io::Result<Option<Frame>>;
}

/// What the engine does on the host.
pub trait Host: Send + Sync {
    /// Creates (or reuses) bridge `name` with its address, up.
    fn ensure_bridge(&self, name: &str, address: IpNet) -> Result<(), NetlinkError>;
    /// Deletes a link; false when it was not there.
    fn delete_link(&self, name: &str) -> Result<bool, NetlinkError>;
    /// Deletes several links at once; returns how many there were.
    fn delete_links(&self, names: &[String]) -> Result<usize, NetlinkError>;
    /// Whether a link of that name exists.
    fn link_exists(&self, name: &str) -> bool;
    /// The host's routes of one address family (prefix routes; the default route too).
    fn routes(&self, ipv6: bool) -> Vec<HostRoute>;
    /// Reads a kernel setting such as `net.ipv4.neigh.default.gc_thresh3`.
    fn read_sysctl(&self, key: &str) -> io::Result<String>;
    /// Writes a kernel setting.
    fn write_sysctl(&self, key: &str, value: &str) -> io::Result<()>;
    /// Starts capturing every frame on host link `link`, reads waiting at most `poll`.
    fn capture(&self, link: &str, poll: Duration) -> io::Result<Box<dyn Frames>>;
}

/// This machine.
pub struct LocalHost {
    netlink: std::sync::Arc<netlink::Netlink>,
}

impl LocalHost {
    /// The host, reached through `netlink` (which the namespace driver shares).
    pub fn new(netlink: std::sync::Arc<netlink::Netlink>) -> Self {
        LocalHost { netlink }
    }
}

impl Frames for capture::Capture {
    fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        self.next()
    }
}

impl Host for LocalHost {
    fn ensure_bridge(&self, name: &str, address: IpNet) -> Result<(), NetlinkError> {
        self.netlink.ensure_bridge(name, address)
    }
    fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        self.netlink.delete_link(name)
    }
    fn delete_links(&self, names: &[String]) -> Result<usize, NetlinkError> {
        self.netlink.delete_links(names)
    }
    fn link_exists(&self, name: &str) -> bool {
        std::path::Path::new("/sys/class/net").join(name).exists()
    }
    fn routes(&self, ipv6: bool) -> Vec<HostRoute> {
        let family = if ipv6 { "-6" } else { "-4" };
        let argv = ["ip", "-j", family, "route", "show"].map(String::from);
        let Ok(out) = process::run(&argv, None) else {
            return Vec::new();
        };
        #[derive(serde::Deserialize)]
        struct Route {
            dst: String,
            dev: Option<String>,
        }
        let routes: Vec<Route> = serde_json::from_str(&out.stdout).unwrap_or_default();
        routes
            .into_iter()
            .filter_map(|r| {
                let dst = if r.dst == "default" {
                    if ipv6 { "::/0" } else { "0.0.0.0/0" }.parse().ok()?
                } else {
                    r.dst.parse().ok()?
                };
                Some(HostRoute { dst, dev: r.dev })
            })
            .collect()
    }
    fn read_sysctl(&self, key: &str) -> io::Result<String> {
        sysctl::read(key)
    }
    fn write_sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        sysctl::write(key, value)
    }
    fn capture(&self, link: &str, poll: Duration) -> io::Result<Box<dyn Frames>> {
        Ok(Box::new(capture::Capture::open(link, poll)?))
    }
}
