//! What a lab needs on the host and at each guest's start, written as the commands that do the
//! same by hand. vxlab itself does this through netlink (and libvirt starts the VMs), so these
//! commands are never run; `plan` and `walk` print them, marked as vxlab's own work, so a
//! student can rebuild the whole lab from the plan. Pure: made from the plan.

use std::fmt;

use serde::Serialize;

use crate::guest_command::shell_words;
use crate::lab::DriverKind;
use crate::plan::{GuestPlan, Plan};

/// A command on the host (or in a guest as it starts), as a student would type it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCommand {
    /// The words, program first.
    pub argv: Vec<String>,
}

impl HostCommand {
    fn new(words: &[&str]) -> Self {
        HostCommand {
            argv: words.iter().map(|w| w.to_string()).collect(),
        }
    }
}

impl fmt::Display for HostCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&shell_words(&self.argv))
    }
}

impl Serialize for HostCommand {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("HostCommand", 2)?;
        st.serialize_field("line", &self.to_string())?;
        st.serialize_field("argv", &self.argv)?;
        st.end()
    }
}

/// Who does a part of the host side when vxlab builds the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// vxlab, through netlink on the host.
    Vxlab,
    /// vxlab, running `iptables` and `ip6tables` on the host.
    VxlabFirewall,
    /// libvirt, when it starts the guest's domain.
    Libvirt,
    /// The guest itself as it boots, from the seed disk vxlab writes.
    GuestBoot,
}

impl Actor {
    /// Who it is, in a few words.
    pub fn describe(self) -> &'static str {
        match self {
            Actor::Vxlab => "vxlab, through netlink",
            Actor::VxlabFirewall => "vxlab, with iptables and ip6tables",
            Actor::Libvirt => "libvirt, when it starts the domain",
            Actor::GuestBoot => "the guest at boot, from vxlab's seed disk",
        }
    }
}

/// One part of the host side: what it makes, who does it, and the commands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostPart {
    /// The guest it is for; `None` for the bridge.
    pub guest: Option<String>,
    /// What it makes, e.g. "the host bridge vxbr-seed with the lab's gateway address".
    pub what: String,
    /// Who does it.
    pub by: Actor,
    /// The commands that do the same by hand.
    pub commands: Vec<HostCommand>,
}

/// The host side of `plan`, in the order vxlab builds it: the bridge, then each guest's link
/// to it.
pub fn host_side(plan: &Plan) -> Vec<HostPart> {
    let gateway = plan.gateway.to_string();
    let mut addr = vec!["ip", "addr", "add", &gateway, "dev", &plan.bridge];
    if plan.gateway.addr().is_ipv6() {
        addr.push("nodad");
    }
    let mut parts = vec![HostPart {
        guest: None,
        what: format!("the bridge {} with address {}", plan.bridge, plan.gateway),
        by: Actor::Vxlab,
        commands: vec![
            HostCommand::new(&["ip", "link", "add", &plan.bridge, "type", "bridge"]),
            owner(&plan.bridge, &plan.lab),
            HostCommand::new(&addr),
            HostCommand::new(&["ip", "link", "set", "up", "dev", &plan.bridge]),
        ],
    }];
    parts.push(HostPart {
        guest: None,
        what: format!(
            "the firewall rules that fence {} and the guests' host ends ({}-*) off from the \
             host: guests get answers from the host, never a connection to it, and nothing is \
             routed in or out (IPv4; ip6tables the same where the host has IPv6)",
            plan.bridge,
            crate::plan::host_link_prefix(&plan.lab)
        ),
        by: Actor::VxlabFirewall,
        commands: crate::host::firewall::insert_commands(&crate::host::firewall::fence(
            &plan.bridge,
            &plan.lab,
            true,
        ))
        .into_iter()
        .map(|argv| HostCommand { argv })
        .collect(),
    });
    for g in &plan.guests {
        match plan.driver {
            DriverKind::Netns => parts.push(namespace(plan, g)),
            DriverKind::Libvirt => parts.extend(vm(plan, g)),
        }
    }
    parts
}

/// The owner vxlab marks a host link or bridge with, in its alias (`ip -d link show` prints
/// it): what it reads to know the link is its own, and whose (see [`crate::host::inventory`]).
fn owner(link: &str, owner: &str) -> HostCommand {
    let alias = crate::host::inventory::owner_alias(owner);
    HostCommand::new(&["ip", "link", "set", "dev", link, "alias", &alias])
}

/// A guest's host link into the bridge, up.
fn plug(link: &str, bridge: &str) -> [HostCommand; 2] {
    [
        HostCommand::new(&["ip", "link", "set", "dev", link, "master", bridge]),
        HostCommand::new(&["ip", "link", "set", "up", "dev", link]),
    ]
}

/// A namespace guest: the namespace, and a veth pair from the bridge to its underlay interface.
fn namespace(plan: &Plan, g: &GuestPlan) -> HostPart {
    let (ns, link, mac) = (&g.instance, &g.host_link, g.underlay_mac.to_string());
    HostPart {
        guest: Some(g.name.clone()),
        what: format!(
            "{}: namespace {ns}, plugged into {} by veth {link}, {} inside",
            g.name, plan.bridge, g.interface
        ),
        by: Actor::Vxlab,
        commands: vec![
            HostCommand::new(&["ip", "netns", "add", ns]),
            HostCommand::new(&[
                "ip",
                "link",
                "add",
                link,
                "type",
                "veth",
                "peer",
                "name",
                &g.interface,
                "netns",
                ns,
            ]),
            owner(link, ns),
            HostCommand::new(&[
                "ip",
                "-n",
                ns,
                "link",
                "set",
                "dev",
                &g.interface,
                "address",
                &mac,
            ]),
        ]
        .into_iter()
        .chain(plug(link, &plan.bridge))
        .collect(),
    }
}

/// A VM: libvirt plugs its tap into the bridge; the guest brings its underlay up at boot.
fn vm(plan: &Plan, g: &GuestPlan) -> [HostPart; 2] {
    let (tap, mac) = (&g.host_link, g.underlay_mac.to_string());
    let underlay = g.underlay.to_string();
    [
        HostPart {
            guest: Some(g.name.clone()),
            what: format!(
                "{}: domain {}, its NIC (MAC {mac}) is tap {tap} on {}",
                g.name, g.instance, plan.bridge
            ),
            by: Actor::Libvirt,
            commands: std::iter::once(HostCommand::new(&[
                "ip", "tuntap", "add", "dev", tap, "mode", "tap",
            ]))
            .chain(plug(tap, &plan.bridge))
            .collect(),
        },
        HostPart {
            guest: Some(g.name.clone()),
            what: format!("{}: its underlay {}, inside the guest", g.name, g.interface),
            by: Actor::GuestBoot,
            commands: vec![
                HostCommand::new(&["ip", "addr", "add", &underlay, "dev", &g.interface]),
                HostCommand::new(&["ip", "link", "set", "up", "dev", &g.interface]),
            ],
        },
    ]
}

/// How a student runs a guest's own commands by hand.
pub fn enter(plan: &Plan, g: &GuestPlan) -> String {
    match plan.driver {
        DriverKind::Netns => format!("ip netns exec {} COMMAND", g.instance),
        DriverKind::Libvirt => format!("vxlab ssh {}", g.name),
    }
}

/// The host side as `plan` prints it: `#` lines say what each part makes and who does it.
pub fn render(parts: &[HostPart]) -> String {
    let mut out = String::new();
    for p in parts {
        out.push_str(&format!("# {} ({})\n", p.what, p.by.describe()));
        for c in &p.commands {
            out.push_str(&c.to_string());
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(file: &str) -> Plan {
        let path = format!("{}/labs/{file}", env!("CARGO_MANIFEST_DIR"));
        crate::plan::plan(&crate::lab::load(std::path::Path::new(&path)).unwrap())
    }

    fn lines(parts: &[HostPart]) -> Vec<String> {
        parts
            .iter()
            .flat_map(|p| p.commands.iter().map(|c| c.to_string()))
            .collect()
    }

    #[test]
    fn a_namespace_lab_is_a_bridge_and_a_veth_per_guest() {
        let p = plan_of("two-netns.yaml");
        let parts = host_side(&p);
        let all = lines(&parts);
        assert_eq!(
            &all[..4],
            [
                "ip link add vxbr-seed type bridge",
                "ip link set dev vxbr-seed alias 'vxlab: two-netns'",
                "ip addr add 192.168.10.1/24 dev vxbr-seed",
                "ip link set up dev vxbr-seed",
            ]
        );
        let a = &p.guests[0];
        assert!(all.contains(&"ip netns add vxlab-two-netns.vm-a".to_string()));
        let veth = format!(
            "ip link add {} type veth peer name eth0 netns vxlab-two-netns.vm-a",
            a.host_link
        );
        // Each host link carries its owner as vxlab marks it, right after it is made.
        let at = all.iter().position(|l| *l == veth).unwrap();
        assert_eq!(
            all[at + 1],
            format!(
                "ip link set dev {} alias 'vxlab: vxlab-two-netns.vm-a'",
                a.host_link
            )
        );
        // The alias is the one vxlab reads back as the owner.
        assert_eq!(
            crate::host::inventory::owner_alias(&a.instance),
            "vxlab: vxlab-two-netns.vm-a"
        );
        assert!(all.contains(&format!(
            "ip -n vxlab-two-netns.vm-a link set dev eth0 address {}",
            a.underlay_mac
        )));
        assert!(all.contains(&format!(
            "iptables -w -I INPUT -i {} -m conntrack '!' --ctstate ESTABLISHED,RELATED -j DROP \
             -m comment --comment 'vxlab: two-netns'",
            p.bridge
        )));
        assert!(parts
            .iter()
            .all(|p| matches!(p.by, Actor::Vxlab | Actor::VxlabFirewall)));
        assert_eq!(parts.len(), 4);
    }

    #[test]
    fn a_vm_lab_has_libvirt_taps_and_the_underlay_set_at_boot() {
        let p = plan_of("two-vm.yaml");
        let parts = host_side(&p);
        let b = &p.guests[1];
        let tap = parts
            .iter()
            .find(|x| x.by == Actor::Libvirt && x.guest.as_deref() == Some("vm-b"))
            .unwrap();
        assert_eq!(
            tap.commands[0].to_string(),
            format!("ip tuntap add dev {} mode tap", b.host_link)
        );
        let boot = parts
            .iter()
            .find(|x| x.by == Actor::GuestBoot && x.guest.as_deref() == Some("vm-b"))
            .unwrap();
        assert_eq!(
            boot.commands[0].to_string(),
            "ip addr add 192.168.10.3/24 dev eth0"
        );
        // The plan's own steps do not add the underlay address again on a VM.
        assert!(b
            .steps
            .iter()
            .all(|s| !s.command.to_string().contains("192.168.10.3/24")));
    }

    #[test]
    fn an_ipv6_bridge_address_skips_duplicate_address_detection() {
        let all = lines(&host_side(&plan_of("ipv6.yaml")));
        assert!(
            all[2].starts_with("ip addr add fd00:10::")
                && all[2].ends_with("/64 dev vxbr-v6 nodad")
        );
    }
}
