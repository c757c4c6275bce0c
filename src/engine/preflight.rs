//! What `up` makes sure of on the host before it creates anything, and the host settings a lab
//! needs.

use super::EngineError;
use crate::host::{sysctl, Host};
use crate::lab::DriverKind;
use crate::plan::Plan;
use crate::state::{LabLock, LabState, Resource};

/// Refuses a bridge of the lab's name that this lab did not create: it belongs to someone else.
pub(super) fn refuse_foreign_bridge(
    host: &dyn Host,
    plan: &Plan,
    known: &[Resource],
) -> Result<(), EngineError> {
    let ours = known.contains(&Resource::Bridge {
        name: plan.bridge.clone(),
    });
    if host.link_exists(&plan.bridge) && !ours {
        let advice = if plan.instance.is_some() {
            "a copy's bridge is `underlay.bridge` cut to fit, with the copy's name: choose \
             another `underlay.bridge` or copy name"
        } else {
            "choose another `underlay.bridge`"
        };
        return Err(EngineError::Host(format!(
            "a link named {} already exists on this host and lab {} did not create it; {advice}",
            plan.bridge, plan.lab
        )));
    }
    Ok(())
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
/// guests overflows the default (`gc_thresh3` = 1024) and pings get lost. Raises it for the
/// lab, recording the value to restore.
pub(super) fn size_neighbour_tables(
    host: &dyn Host,
    plan: &Plan,
    lock: &LabLock,
    st: &mut LabState,
) -> Result<Vec<String>, EngineError> {
    if plan.driver != DriverKind::Netns {
        return Ok(Vec::new());
    }
    let (v4, v6) = plan.neighbours_needed();
    let mut notes = Vec::new();
    for (needed, ipv6) in [(v4, false), (v6, true)] {
        if needed == 0 {
            continue;
        }
        let keys = sysctl::neighbour_keys(ipv6);
        // gc_thresh2 is where garbage collection starts, gc_thresh3 the hard limit.
        for (key, target) in [(&keys[1], needed * 2), (&keys[2], needed * 4)] {
            let Ok(now) = host.read_sysctl(key) else {
                continue;
            };
            let current: usize = now.parse().unwrap_or(usize::MAX);
            if current >= target {
                continue;
            }
            lock.record(
                st,
                vec![Resource::Sysctl {
                    key: key.clone(),
                    previous: now.clone(),
                }],
            )?;
            host.write_sysctl(key, &target.to_string())
                .map_err(|e| EngineError::Host(format!("cannot raise {key} to {target}: {e}")))?;
            notes.push(format!(
                "raised {key} from {now} to {target}: the lab needs about {needed} neighbour \
                 entries and all namespaces share one table"
            ));
        }
    }
    Ok(notes)
}
