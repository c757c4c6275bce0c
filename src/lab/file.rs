//! The lab file as written: serde structs that reject unknown fields and keep every value in
//! the form the user typed, so [`super::validate`] can judge it and point at it.

use indexmap::IndexMap;
use serde::Deserialize;

/// A whole lab file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLab {
    pub name: String,
    pub driver: String,
    pub underlay: RawUnderlay,
    pub guests: IndexMap<String, RawGuest>,
    pub vxlans: Vec<RawVxlan>,
    pub checks: Option<Vec<RawCheck>>,
    pub libvirt: Option<RawLibvirt>,
    pub iproute2: Option<RawIproute2>,
    pub workshop: Option<RawWorkshop>,
}

/// `workshop:` settings: where copies take their underlays from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkshop {
    pub pool: Option<String>,
}

/// `underlay:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUnderlay {
    pub bridge: String,
    pub subnet: String,
    pub gateway: Option<String>,
    pub interface: Option<String>,
}

/// One entry of `guests:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuest {
    pub address: String,
    pub memory: Option<u64>,
    pub vcpus: Option<u64>,
}

/// One entry of `vxlans:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVxlan {
    pub name: String,
    pub vni: i64,
    pub group: Option<String>,
    /// `auto`: every other member, by head-end replication.
    pub remotes: Option<serde_yaml::Value>,
    pub dev: Option<String>,
    pub port: Option<i64>,
    pub learning: Option<bool>,
    /// `learned` (default) or `static`: vxlab writes every peer's MAC with its VTEP.
    pub fdb: Option<String>,
    pub mtu: Option<i64>,
    pub addresses: IndexMap<String, String>,
    pub macs: Option<IndexMap<String, String>>,
}

/// One entry of `checks:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    /// `all`, or `{ from, to, expect }`.
    pub ping: serde_yaml::Value,
}

/// `libvirt:` settings, used by the libvirt driver.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLibvirt {
    pub uri: Option<String>,
    pub image: Option<String>,
    pub accel: Option<String>,
    pub memory: Option<u64>,
    pub vcpus: Option<u64>,
}

/// `iproute2:` settings: when and from what to build iproute2.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIproute2 {
    pub build: Option<String>,
    pub source: Option<String>,
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    pub cflags: Option<String>,
}
