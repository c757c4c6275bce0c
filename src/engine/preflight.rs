//! What `up` makes sure of on the host before it creates anything, and the host settings a lab
//! needs.

use super::EngineError;
use crate::host::{inventory, neighbours, Host, NeighbourNeeds};
use crate::lab::DriverKind;
use crate::plan::Plan;
use crate::state::Resource;

/// Refuses every resource of `wanted` that is on the host although the lab's own state
/// (`recorded`) does not list it: vxlab never adopts another lab's bridge, namespace or link.
/// Names the owner where its alias or name tells.
pub(super) fn refuse_foreign(
    host: &dyn Host,
    plan: &Plan,
    wanted: &[Resource],
    recorded: &[Resource],
) -> Result<(), EngineError> {
    let found = inventory::foreign(wanted, recorded, |r| host.probe(r));
    let Some((resource, owner)) = found.first() else {
        return Ok(());
    };
    let what = match resource {
        Resource::Bridge { name } => format!("bridge {name}"),
        Resource::HostLink { name } => format!("link {name}"),
        Resource::Netns { name } => format!("namespace {name}"),
        Resource::Domain { name, .. } => format!("domain {name}"),
        Resource::Network { bridge, host } => {
            format!("the libvirt network of bridge {bridge} on host {host}")
        }
        Resource::Volume { name, host, .. } => format!("volume {name} on host {host}"),
        Resource::Path { path } => format!("{}", path.display()),
        Resource::Sysctl { key, .. } => key.clone(),
        Resource::Fence { bridge } => format!("the firewall rules of bridge {bridge}"),
    };
    let lab = format!("lab {}", plan.lab);
    // A lab of the same name that this state does not hold was brought up with another state
    // directory, or its state was removed: say so, rather than "lab X did not create it (it
    // belongs to lab X)". The rest of the owner names the guest.
    let same_name = owner
        .as_deref()
        .and_then(|o| inventory::of_lab(o, &plan.lab));
    let whose = match (same_name, owner) {
        (Some(guest), _) => format!(
            ", made by another lab named {}{guest}: one brought up with another state \
             directory (`--state-dir`, `VXLAB_STATE_DIR`), or whose state was removed",
            plan.lab
        ),
        (None, Some(o)) => format!(" and {lab} did not create it (it belongs to {o})"),
        (None, None) => format!(" and {lab} did not create it"),
    };
    let advice = match resource {
        Resource::Bridge { .. } | Resource::Network { .. } if plan.instance.is_some() => {
            "a copy's bridge is `underlay.bridge` cut to fit, with the copy's name: choose \
             another `underlay.bridge` or copy name"
        }
        Resource::Bridge { .. } | Resource::Network { .. } => "choose another `underlay.bridge`",
        _ => "remove it, or bring that lab down first",
    };
    let more = match found.len() {
        1 => String::new(),
        n => format!(" (and {} more of the lab's names)", n - 1),
    };
    Err(EngineError::Host(format!(
        "{what}{more} already exists on this host{whose}; {advice}"
    )))
}

/// Refuses a lab whose underlay subnet the host already routes elsewhere: the lab would hijack
/// or be hijacked by that network.
pub(super) fn refuse_routed_subnet(host: &dyn Host, plan: &Plan) -> Result<(), EngineError> {
    let subnet = plan.gateway.trunc();
    for r in host.routes(subnet.addr().is_ipv6()) {
        if r.dst.prefix_len() == 0 || r.dev.as_deref() == Some(plan.bridge.as_str()) {
            continue;
        }
        if r.dst.contains(&subnet.network()) || subnet.contains(&r.dst.network()) {
            // A copy's subnet comes from the workshop pool, not from the lab file.
            let advice = if plan.instance.is_some() {
                "choose another workshop pool (`--pool`, or `workshop: { pool: … }`)"
            } else {
                "choose another `underlay.subnet`"
            };
            return Err(EngineError::Host(format!(
                "the underlay subnet {subnet} overlaps {} routed via {} on this host; {advice}",
                r.dst,
                r.dev.as_deref().unwrap_or("another route")
            )));
        }
    }
    Ok(())
}

/// The kernel's neighbour table is shared by every namespace; a full mesh of many namespace
/// guests overflows the default (`gc_thresh3` = 1024) and pings get lost. The lab's need goes
/// into the host-wide record, which raises the table as far as all running labs need.
pub(super) fn claim_neighbours(
    host: &dyn Host,
    plan: &Plan,
    id: &str,
) -> Result<Vec<String>, EngineError> {
    if plan.driver != DriverKind::Netns {
        return Ok(Vec::new());
    }
    let (ipv4, ipv6) = plan.neighbours_needed();
    // Every guest of a namespace lab is on the one bridge: a flood reaches them all.
    let flood = plan.guests.len();
    let needs = NeighbourNeeds { ipv4, ipv6, flood };
    let changes = host.claim_neighbours(id, needs)?;
    Ok(changes
        .iter()
        .map(|c| {
            let why = if c.key == neighbours::BACKLOG {
                format!(
                    "one multicast flood reaches {flood} namespaces, and its copies wait in \
                     one queue per CPU"
                )
            } else {
                format!(
                    "the lab needs about {ipv4} IPv4 and {ipv6} IPv6 neighbour entries, and \
                     all namespaces share one table"
                )
            };
            format!("{}: {why}", c.describe())
        })
        .collect())
}
