//! A class bigger than one host: the hypervisors it may use ([`inventory`]), what each has
//! ([`survey`]), and which copy runs where ([`placement`]). All pure; the hosts are reached
//! through libvirt remote connections at the edge (`driver::libvirt::remote`).

pub mod inventory;
pub mod placement;
pub mod survey;

pub use inventory::{HostEntry, HostSpec, Inventory, SshLogin};

/// Environment variable naming the inventory when `--hosts` does not.
pub const HOSTS_ENV: &str = "VXLAB_HOSTS";
