//! Where each copy of a class runs: whole copies to hosts, so no lab spans two hosts and no
//! underlay crosses a host boundary. Pure: the hosts' room is measured at the edge
//! ([`super::survey`]), the choice is made here.
//!
//! A host's share is its `weight` from the inventory, else its capacity: the copies it holds
//! now plus the fewer of the copies that still fit in its free memory and the copies its free
//! cores serve well. Weights and capacities are not one unit, so once any host has a weight,
//! a host without one weighs 1 (`weight: 2` then means "twice the others"). Each new copy goes to the host that is least loaded once it has it
//! (copies on it over its share), never past the copies that fit in its memory; ties go to
//! the host with more room left, then to the one listed first.

/// What one host can take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoom {
    /// Its name.
    pub name: String,
    /// How many more copies fit in its free memory now.
    pub fit: usize,
    /// How many more copies its free cores serve well (its CPU room).
    pub served: usize,
    /// Copies of this class already running there (they stay).
    pub running: usize,
    /// Its weight from the inventory.
    pub weight: Option<u64>,
}

impl HostRoom {
    /// Its share of the class; `weighted`: some host of the class has a weight.
    fn share(&self, weighted: bool) -> f64 {
        match self.weight {
            Some(w) => w as f64,
            None if weighted => 1.0,
            None => (self.running + self.fit.min(self.served)).max(1) as f64,
        }
    }
}

/// The class does not fit on the hosts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{wanted} new copies do not fit on these hosts: {}; {fit} in all. Ask for --count {total} \
     or fewer, or add hosts to the inventory; nothing was created",
    rooms.iter().map(|(h, n)| if *n == 0 { format!("{h} is full") } else { format!("{h} takes {n} more") }).collect::<Vec<_>>().join(", ")
)]
pub struct DoesNotFit {
    /// New copies asked for.
    pub wanted: usize,
    /// New copies that fit.
    pub fit: usize,
    /// What `--count` could be: the copies running plus those that fit.
    pub total: usize,
    /// Each host and the copies it can take.
    pub rooms: Vec<(String, usize)>,
}

/// Chooses a host (its index in `hosts`) for each of `new` copies, in order.
pub fn place(new: usize, hosts: &[HostRoom]) -> Result<Vec<usize>, DoesNotFit> {
    let fit: usize = hosts.iter().map(|h| h.fit).sum();
    if new > fit {
        return Err(DoesNotFit {
            wanted: new,
            fit,
            total: fit + hosts.iter().map(|h| h.running).sum::<usize>(),
            rooms: hosts.iter().map(|h| (h.name.clone(), h.fit)).collect(),
        });
    }
    let weighted = hosts.iter().any(|h| h.weight.is_some());
    let mut placed = vec![0usize; hosts.len()];
    let mut out = Vec::with_capacity(new);
    for _ in 0..new {
        let best = (0..hosts.len())
            .filter(|&i| placed[i] < hosts[i].fit)
            .min_by(|&a, &b| {
                let load =
                    |i: usize| (hosts[i].running + placed[i] + 1) as f64 / hosts[i].share(weighted);
                let left = |i: usize| hosts[i].fit - placed[i];
                load(a)
                    .total_cmp(&load(b))
                    .then(left(b).cmp(&left(a)))
                    .then(a.cmp(&b))
            })
            .expect("the copies fit, so some host has room");
        placed[best] += 1;
        out.push(best);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host with room for `fit` copies in memory, and cores for as many.
    fn room(name: &str, fit: usize, running: usize, weight: Option<u64>) -> HostRoom {
        HostRoom {
            name: name.into(),
            fit,
            served: fit,
            running,
            weight,
        }
    }

    fn counts(placed: &[usize], hosts: usize) -> Vec<usize> {
        (0..hosts)
            .map(|h| placed.iter().filter(|&&p| p == h).count())
            .collect()
    }

    #[test]
    fn two_equal_hosts_take_one_copy_each_the_first_listed_first() {
        let hosts = [room("h1", 10, 0, None), room("h2", 10, 0, None)];
        assert_eq!(place(2, &hosts).unwrap(), [0, 1]);
    }

    #[test]
    fn copies_follow_capacity_a_bigger_host_takes_more() {
        // h1 has room for 40 copies, h2 for 20: 60 students split 2 to 1, and both fill up.
        let hosts = [room("h1", 40, 0, None), room("h2", 20, 0, None)];
        assert_eq!(counts(&place(30, &hosts).unwrap(), 2), [20, 10]);
        assert_eq!(counts(&place(60, &hosts).unwrap(), 2), [40, 20]);
    }

    #[test]
    fn copies_follow_free_cores_too_a_host_with_memory_but_few_cores_takes_fewer() {
        // Equal memory (30 copies each); h1's free cores serve 30 copies, h2's only 10.
        let mut hosts = [room("h1", 30, 0, None), room("h2", 30, 0, None)];
        hosts[1].served = 10;
        assert_eq!(counts(&place(20, &hosts).unwrap(), 2), [15, 5]);
        // Memory still decides what fits: past its CPU room h2 takes copies, at h1's pace.
        assert_eq!(counts(&place(60, &hosts).unwrap(), 2), [30, 30]);
    }

    #[test]
    fn copies_already_running_count_toward_their_hosts_load() {
        // h1 already runs 4 copies: the next 4 go to h2 until both carry the same load.
        let hosts = [room("h1", 6, 4, None), room("h2", 10, 0, None)];
        assert_eq!(place(4, &hosts).unwrap(), [1, 1, 1, 1]);
    }

    #[test]
    fn weights_set_the_shares_but_memory_still_caps_a_host() {
        let hosts = [room("h1", 50, 0, Some(1)), room("h2", 50, 0, Some(2))];
        assert_eq!(counts(&place(30, &hosts).unwrap(), 2), [10, 20]);
        // h2 may hold twice h1's share, but only 5 fit in its memory.
        let capped = [room("h1", 50, 0, Some(1)), room("h2", 5, 0, Some(2))];
        assert_eq!(counts(&place(30, &capped).unwrap(), 2), [25, 5]);
    }

    #[test]
    fn a_class_that_does_not_fit_is_refused_with_what_would() {
        let hosts = [
            room("h1", 3, 1, None),
            room("h2", 2, 0, None),
            room("h3", 0, 2, None),
        ];
        let e = place(8, &hosts).unwrap_err();
        assert_eq!((e.wanted, e.fit, e.total), (8, 5, 8));
        assert_eq!(
            e.to_string(),
            "8 new copies do not fit on these hosts: h1 takes 3 more, h2 takes 2 more, h3 is \
             full; 5 in all. Ask for --count 8 or fewer, or add hosts to the inventory; nothing \
             was created"
        );
        assert_eq!(counts(&place(5, &hosts).unwrap(), 3), [3, 2, 0]);
    }

    #[test]
    fn a_weight_on_some_hosts_means_that_many_times_the_others() {
        // The inventory's own example: h2 `weight: 2`, h1 none. Both have room for 16.
        let hosts = [room("h1", 16, 0, None), room("h2", 16, 0, Some(2))];
        assert_eq!(counts(&place(9, &hosts).unwrap(), 2), [3, 6]);
    }

    #[test]
    fn no_host_is_given_more_than_fits() {
        let hosts = [room("h1", 1, 0, Some(100)), room("h2", 3, 0, Some(1))];
        assert_eq!(counts(&place(4, &hosts).unwrap(), 2), [1, 3]);
    }
}
