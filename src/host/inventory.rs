//! What exists on the host, and whose it is: the facts `up` needs to refuse a link, bridge or
//! namespace that its own state did not record, naming the owner when it can.
//!
//! Links carry their owner in their alias (`ip link show` prints it), set when vxlab creates
//! them; a namespace's name says its lab and guest (`plan::instance_name`).

use std::path::Path;

use crate::plan::instance_owner;
use crate::state::Resource;

/// The alias of a link that belongs to namespace guest `instance` (an `instance_name`) or,
/// for a bridge, to a lab: `vxlab: <instance or lab>`.
pub fn owner_alias(owner: &str) -> String {
    format!("vxlab: {owner}")
}

/// Whether a resource is on the host, and whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// Not on the host.
    Absent,
    /// On the host; `owner` describes who made it, when that is known ("lab two-netns, guest
    /// vm-a").
    Present {
        /// Who made it, in words.
        owner: Option<String>,
    },
    /// This kind cannot be looked up on the host (a libvirt domain: ask the driver; a sysctl).
    Unknown,
}

impl Presence {
    /// True when the resource is certainly on the host.
    pub fn exists(&self) -> bool {
        matches!(self, Presence::Present { .. })
    }
}

/// The owner an alias or an instance name describes, in words.
fn describe(name: &str) -> String {
    match instance_owner(name) {
        Some((lab, guest)) => format!("lab {lab}, guest {guest}"),
        None => format!("lab {name}"),
    }
}

/// When owner `owner` (as [`Presence::Present`] words it) is lab `lab`: the rest of the
/// words, empty or naming the guest (`, guest vm-a`).
pub fn of_lab<'a>(owner: &'a str, lab: &str) -> Option<&'a str> {
    let rest = owner.strip_prefix("lab ")?.strip_prefix(lab)?;
    (rest.is_empty() || rest.starts_with(',')).then_some(rest)
}

/// Whether link `name` exists, and its owner from its alias.
pub fn link(name: &str) -> Presence {
    link_in(Path::new("/sys/class/net"), name)
}

/// Link `name`'s directory under `sys` (`/sys/class/net`), when there is such a link.
fn link_dir(sys: &Path, name: &str) -> Option<std::path::PathBuf> {
    let dir = sys.join(name);
    (!name.is_empty() && !name.contains('/') && dir.exists()).then_some(dir)
}

fn link_in(sys: &Path, name: &str) -> Presence {
    let Some(dir) = link_dir(sys, name) else {
        return Presence::Absent;
    };
    let owner = std::fs::read_to_string(dir.join("ifalias"))
        .ok()
        .and_then(|a| a.trim().strip_prefix("vxlab: ").map(describe));
    Presence::Present { owner }
}

/// The host end of a namespace guest's underlay link as the host shows it: whether it is up
/// (administratively), the bridge it is on, and the state of the lab's bridge `lab_bridge`;
/// `None` when there is no such link.
pub fn host_end(name: &str, lab_bridge: &str) -> Option<crate::observe::HostEnd> {
    host_end_in(Path::new("/sys/class/net"), name, lab_bridge)
}

/// Whether link `name` of directory `sys` is up (administratively); `None` when it is not
/// there.
fn is_up(sys: &Path, name: &str) -> Option<bool> {
    let dir = link_dir(sys, name)?;
    let flags = std::fs::read_to_string(dir.join("flags")).ok()?;
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).ok()?;
    Some(flags & libc::IFF_UP as u32 != 0)
}

/// Bridge `name` of this host: up, down or missing.
pub fn bridge_state(name: &str) -> crate::observe::BridgeState {
    bridge_state_in(Path::new("/sys/class/net"), name)
}

fn bridge_state_in(sys: &Path, name: &str) -> crate::observe::BridgeState {
    use crate::observe::BridgeState;
    match is_up(sys, name) {
        Some(true) => BridgeState::Up,
        Some(false) => BridgeState::Down,
        None => BridgeState::Missing,
    }
}

fn host_end_in(sys: &Path, name: &str, lab_bridge: &str) -> Option<crate::observe::HostEnd> {
    let dir = link_dir(sys, name)?;
    let up = is_up(sys, name)?;
    let bridge = std::fs::read_link(dir.join("master"))
        .ok()
        .and_then(|t| Some(t.file_name()?.to_string_lossy().into_owned()));
    Some(crate::observe::HostEnd {
        link: name.to_string(),
        up,
        bridge,
        lab_bridge: bridge_state_in(sys, lab_bridge),
    })
}

/// Whether namespace `name` exists, and its owner from its name. A plain file with nothing
/// mounted on it (left by a run killed between making the mount point and mounting) is no
/// one's namespace: it counts as absent, and creating the namespace replaces it. Anything
/// else of that name (a directory) is present, and no one's that vxlab knows.
pub fn namespace(name: &str) -> Presence {
    let path = super::netns::path(name);
    if name.is_empty() || name.contains('/') {
        return Presence::Absent;
    }
    if !super::netns::is_mounted(&path) {
        // Something other than a plain file there (a directory) is in the way, and not
        // vxlab's: a namespace cannot be made on it.
        return match std::fs::symlink_metadata(&path) {
            Ok(m) if !m.file_type().is_file() => Presence::Present { owner: None },
            _ => Presence::Absent,
        };
    }
    Presence::Present {
        owner: instance_owner(name).map(|_| describe(name)),
    }
}

/// Whether `resource` is on the host.
pub fn probe(resource: &Resource) -> Presence {
    match resource {
        Resource::Bridge { name } | Resource::HostLink { name } => link(name),
        Resource::Netns { name } => namespace(name),
        Resource::Path { path } => match std::fs::symlink_metadata(path) {
            Ok(_) => Presence::Present { owner: None },
            Err(_) => Presence::Absent,
        },
        // Asked of the driver, or of the host the lab was placed on.
        Resource::Domain { .. }
        | Resource::Sysctl { .. }
        | Resource::Fence { .. }
        | Resource::Network { .. }
        | Resource::Volume { .. } => Presence::Unknown,
    }
}

/// The resources of `wanted` that are on the host although `recorded` (the lab's own state)
/// does not list them, each with what is known of its owner: what `up` must refuse to adopt.
pub fn foreign<'a>(
    wanted: &'a [Resource],
    recorded: &[Resource],
    probe: impl Fn(&Resource) -> Presence,
) -> Vec<(&'a Resource, Option<String>)> {
    wanted
        .iter()
        .filter(|r| !recorded.contains(r))
        .filter_map(|r| match probe(r) {
            Presence::Present { owner } => Some((r, owner)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_ends_state_is_read_from_sysfs() {
        let sys = tempfile::tempdir().unwrap();
        let link = sys.path().join("vxab-0");
        std::fs::create_dir(&link).unwrap();
        std::fs::write(link.join("flags"), "0x1002\n").unwrap();
        let end = host_end_in(sys.path(), "vxab-0", "vxbr-x").unwrap();
        assert_eq!((end.up, end.bridge), (false, None));
        assert_eq!(end.lab_bridge, crate::observe::BridgeState::Missing);
        std::fs::write(link.join("flags"), "0x1003\n").unwrap();
        std::os::unix::fs::symlink("../vxbr-x", link.join("master")).unwrap();
        let bridge = sys.path().join("vxbr-x");
        std::fs::create_dir(&bridge).unwrap();
        std::fs::write(bridge.join("flags"), "0x1002\n").unwrap();
        let end = host_end_in(sys.path(), "vxab-0", "vxbr-x").unwrap();
        assert_eq!((end.up, end.bridge.as_deref()), (true, Some("vxbr-x")));
        assert_eq!(end.lab_bridge, crate::observe::BridgeState::Down);
        assert_eq!(host_end_in(sys.path(), "gone", "vxbr-x"), None);
    }

    #[test]
    fn an_owner_is_a_lab_only_by_its_whole_name() {
        assert_eq!(of_lab("lab n", "n"), Some(""));
        assert_eq!(of_lab("lab n, guest x-y", "n"), Some(", guest x-y"));
        assert_eq!(of_lab("lab n-x, guest y", "n"), None);
        assert_eq!(of_lab(&describe("vxlab-n.x-y"), "n"), Some(", guest x-y"));
    }

    #[test]
    fn a_links_owner_is_read_from_its_alias() {
        let sys = tempfile::tempdir().unwrap();
        let link = sys.path().join("vxabcdefgh-0");
        std::fs::create_dir(&link).unwrap();
        std::fs::write(link.join("ifalias"), "vxlab: vxlab-n.x-y\n").unwrap();
        assert_eq!(
            link_in(sys.path(), "vxabcdefgh-0"),
            Presence::Present {
                owner: Some("lab n, guest x-y".into())
            }
        );
        std::fs::write(link.join("ifalias"), "\n").unwrap();
        assert_eq!(
            link_in(sys.path(), "vxabcdefgh-0"),
            Presence::Present { owner: None }
        );
        assert_eq!(link_in(sys.path(), "other"), Presence::Absent);
        assert_eq!(link_in(sys.path(), "../x"), Presence::Absent);
    }

    #[test]
    fn only_unrecorded_resources_that_exist_are_foreign() {
        let ns = |n: &str| Resource::Netns { name: n.into() };
        let wanted = [ns("vxlab-a.g0"), ns("vxlab-a.g1"), ns("vxlab-a.g2")];
        let recorded = [ns("vxlab-a.g0")];
        let on_host = |r: &Resource| match r {
            Resource::Netns { name } if name != "vxlab-a.g2" => Presence::Present {
                owner: Some(describe(name)),
            },
            _ => Presence::Absent,
        };
        assert_eq!(
            foreign(&wanted, &recorded, on_host),
            vec![(&wanted[1], Some("lab a, guest g1".to_string()))]
        );
    }
}
