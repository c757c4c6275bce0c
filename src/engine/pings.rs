//! The checks' pings: every planned overlay ping, each guest's at once; then, for each that was
//! lost, a ping of the peer's VTEP over the underlay, which tells a broken underlay from a
//! broken overlay.

use std::collections::BTreeMap;

use crate::driver::Driver;
use crate::lab::Expect;
use crate::parallel::parallel_map;
use crate::plan::{PingPlan, Plan};
use crate::verify::PingResult;

/// Runs `pings`, each from its guest, guests in parallel; returns them in the given order, and
/// notes for guests that could not ping at all.
fn run(driver: &dyn Driver, plan: &Plan, pings: &[PingPlan]) -> (Vec<PingResult>, Vec<String>) {
    let replies = parallel_map(&plan.guests, driver.parallel_commands(), |g| {
        let mine: Vec<PingPlan> = pings.iter().filter(|p| p.from == g.name).cloned().collect();
        if mine.is_empty() {
            return (Vec::new().into_iter().zip(Vec::new()), None);
        }
        let (replied, error) = match driver.ping(g, &mine) {
            Ok(r) => (r, None),
            Err(e) => (vec![false; mine.len()], Some(e.to_string())),
        };
        (mine.into_iter().zip(replied), error)
    });
    let (replies, errors): (Vec<_>, Vec<_>) = replies.into_iter().unzip();
    // Each guest's results are in the given order; interleave them back.
    let mut by_guest: BTreeMap<&str, _> = plan
        .guests
        .iter()
        .map(|g| g.name.as_str())
        .zip(replies)
        .collect();
    let results = pings
        .iter()
        .filter_map(|p| by_guest.get_mut(p.from.as_str())?.next())
        .map(|(ping, replied)| PingResult {
            ping,
            replied,
            answered_by_itself: false,
        })
        .collect();
    (results, errors.into_iter().flatten().collect())
}

/// The planned pings, then an underlay ping for each lost one that was to reach a guest.
pub(super) fn ping_all(driver: &dyn Driver, plan: &Plan) -> (Vec<PingResult>, Vec<String>) {
    let (mut results, mut notes) = run(driver, plan, &plan.pings);
    let mut follow: Vec<PingPlan> = Vec::new();
    for r in results
        .iter()
        .filter(|r| !r.replied && r.ping.expect == Expect::Success)
    {
        let Some(peer) = r.ping.to_guest.as_deref().and_then(|t| plan.guest(t)) else {
            continue;
        };
        let p = PingPlan::underlay(&r.ping.from, &peer.name, peer.underlay.addr(), plan.driver);
        if !follow.iter().any(|f| f.from == p.from && f.to == p.to) {
            follow.push(p);
        }
    }
    if !follow.is_empty() {
        let (more, more_notes) = run(driver, plan, &follow);
        results.extend(more);
        notes.extend(more_notes);
    }
    (results, notes)
}
