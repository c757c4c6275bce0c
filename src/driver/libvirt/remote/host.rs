//! Another host as the engine's [`Host`]: what the engine does on "the host" for a lab placed
//! there. The bridge is a libvirt network; the routes and captures come over the host's SSH
//! connection; the lock is this machine's, which every vxlab that places labs holds.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::capture::RemoteCapture;
use super::command::HostCommand;
use super::{network, HostLink};
use crate::host::{
    firewall, inventory, lock, parse_routes, Change, ClaimError, Frames, Host, HostLockError,
    HostRoute, NeighbourNeeds, NetlinkError, Presence,
};
use crate::state::Resource;

/// A host of a class, reached through its [`HostLink`].
pub struct RemoteHost {
    link: Arc<HostLink>,
    /// The lab whose bridge this is, for the network's title.
    lab: String,
}

impl RemoteHost {
    /// The host behind `link`, for lab `lab`.
    pub fn new(link: Arc<HostLink>, lab: &str) -> Self {
        RemoteHost {
            link,
            lab: lab.to_string(),
        }
    }

    fn failed(&self, what: String, e: virt::error::Error) -> NetlinkError {
        NetlinkError::Elsewhere {
            host: self.link.name().to_string(),
            what,
            source: Box::new(e),
        }
    }

    /// Runs a command of the lab's fence on the host, over its SSH connection.
    fn firewall(&self, argv: &[String]) -> io::Result<crate::host::process::Output> {
        self.link
            .run(&HostCommand::Firewall(argv.to_vec()))
            .map_err(|e| io::Error::other(e.to_string()))
    }
}

impl Host for RemoteHost {
    fn ensure_bridge(&self, name: &str, address: IpNet) -> Result<(), NetlinkError> {
        network::ensure(self.link.conn(), name, address, &self.lab).map_err(|e| {
            self.failed(
                format!(
                    "making bridge {name} (libvirt network {})",
                    network::network_name(name)
                ),
                e,
            )
        })
    }

    fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        network::remove(self.link.conn(), name).map_err(|e| {
            self.failed(
                format!(
                    "removing bridge {name} (libvirt network {})",
                    network::network_name(name)
                ),
                e,
            )
        })
    }

    fn delete_links(&self, names: &[String]) -> Result<usize, NetlinkError> {
        let mut n = 0;
        for name in names {
            n += usize::from(self.delete_link(name)?);
        }
        Ok(n)
    }

    fn set_alias(&self, _: &str, _: &str) -> Result<(), NetlinkError> {
        // The network's name and title say whose the bridge is.
        Ok(())
    }

    fn plug(&self, _: &str, _: &str) -> Result<(), NetlinkError> {
        // Only namespace guests have a host end vxlab plugs; on other hosts libvirt does.
        Ok(())
    }

    fn probe(&self, resource: &Resource) -> Presence {
        match resource {
            Resource::Network { bridge, .. } | Resource::Bridge { name: bridge } => {
                match network::exists(self.link.conn(), bridge) {
                    Ok(true) => Presence::Present { owner: None },
                    Ok(false) => Presence::Absent,
                    Err(_) => Presence::Unknown,
                }
            }
            // Keys and logs stay on this machine.
            Resource::Path { .. } => inventory::probe(resource),
            _ => Presence::Unknown,
        }
    }

    fn routes(&self, ipv6: bool) -> Vec<HostRoute> {
        match self.link.run(&HostCommand::Routes { ipv6 }) {
            Ok(out) if out.success() => parse_routes(&out.stdout, ipv6),
            _ => Vec::new(),
        }
    }

    fn exclusive(&self) -> Result<Box<dyn Send>, HostLockError> {
        Ok(Box::new(lock::HostLock::take()?))
    }

    fn claim_neighbours(&self, _: &str, _: NeighbourNeeds) -> Result<Vec<Change>, ClaimError> {
        // Only namespace guests share the host's neighbour table.
        Ok(Vec::new())
    }

    fn release_neighbours(&self, _: &str) -> Result<Vec<Change>, ClaimError> {
        Ok(Vec::new())
    }

    fn fence(&self, bridge: &str, lab: &str) -> io::Result<usize> {
        firewall::ensure(
            &|argv| self.firewall(argv),
            &firewall::fence(bridge, lab, true),
        )
    }

    fn unfence(&self, bridge: &str, lab: &str) -> io::Result<usize> {
        firewall::remove(
            &|argv| self.firewall(argv),
            &firewall::fence(bridge, lab, true),
        )
    }

    fn fence_seen(&self, bridge: &str, lab: &str) -> io::Result<firewall::FenceSeen> {
        firewall::missing(
            &|argv| self.firewall(argv),
            &firewall::fence(bridge, lab, true),
        )
    }

    fn write_sysctl(&self, key: &str, _: &str) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "{key}: vxlab changes no kernel setting on host {}",
                self.link.name()
            ),
        ))
    }

    fn capture(&self, link: &str, poll: Duration) -> io::Result<Box<dyn Frames>> {
        Ok(Box::new(RemoteCapture::start(&self.link, link, poll)?))
    }

    fn bridge_resource(&self, bridge: &str) -> Resource {
        Resource::Network {
            host: self.link.name().to_string(),
            bridge: bridge.to_string(),
        }
    }
}
