//! Workshop addressing: the underlay subnet each copy of a lab gets. Copies take subnets of the
//! lab's own prefix length from a pool (`--pool`, `workshop: { pool: … }` in the lab file, or
//! [`DEFAULT_POOL_V4`] / [`DEFAULT_POOL_V6`]), skipping every subnet the host routes, every
//! underlay a lab in the state directory has, and the lab's own overlays, so two labs on one
//! host never share an underlay. The choice is pure ([`allocate`]); what is in use is read
//! through the [`Host`] and the [`StateDir`].

use std::net::IpAddr;

use ipnet::IpNet;

use crate::host::{Host, HostRoute};
use crate::lab::instance::{self, Instance};
use crate::lab::Lab;
use crate::state::{StateDir, LAB_COPY};

/// The pool IPv4 copies come from unless the lab or the command line names one.
pub const DEFAULT_POOL_V4: &str = "10.100.0.0/16";
/// The pool IPv6 copies come from unless the lab or the command line names one.
pub const DEFAULT_POOL_V6: &str = "fd00:100::/48";

/// Where a pool was named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolFrom {
    /// `--pool` on the command line.
    Flag,
    /// `workshop: { pool: … }` in the lab file.
    LabFile,
    /// Neither: vxlab's default.
    Default,
}

/// The pool a lab's copies take their underlays from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    /// The pool's network.
    pub net: IpNet,
    /// Where it was named.
    pub from: PoolFrom,
}

impl Pool {
    /// The pool for `lab`'s copies: `flag` (from `--pool`), else the lab file's, else the
    /// default of the underlay's family.
    pub fn choose(flag: Option<IpNet>, lab: &Lab) -> Result<Pool, PoolError> {
        Ok(match (flag, lab.workshop.pool) {
            // Refused even when every copy asked for runs already: a public range is never
            // meant. (The lab file's pool was validated with the file.)
            (Some(net), _) if !crate::lab::defaults::underlay_range(net) => {
                return Err(PoolError::Public {
                    why: crate::lab::defaults::not_an_underlay_range(net.trunc()),
                })
            }
            (Some(net), _) => Pool {
                net: net.trunc(),
                from: PoolFrom::Flag,
            },
            (None, Some(net)) => Pool {
                net,
                from: PoolFrom::LabFile,
            },
            (None, None) => Pool {
                net: if lab.underlay.subnet.addr().is_ipv4() {
                    DEFAULT_POOL_V4
                } else {
                    DEFAULT_POOL_V6
                }
                .parse()
                .expect("the default pools are valid"),
                from: PoolFrom::Default,
            },
        })
    }

    /// How the user picks another pool, said where the pool came from.
    fn advice(self) -> &'static str {
        match self.from {
            PoolFrom::Flag => "name another with --pool",
            PoolFrom::LabFile => {
                "name another with --pool, or change `workshop: { pool: … }` in the lab file"
            }
            PoolFrom::Default => {
                "name one with --pool, or with `workshop: { pool: … }` in the lab file"
            }
        }
    }
}

/// Why copies cannot get underlays from a pool. Nothing is created when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The pool is a public range.
    #[error("the workshop pool {why}; nothing was created")]
    Public {
        /// What is wrong, and what to use.
        why: String,
    },
    /// The pool's family is not the underlay's.
    #[error(
        "the workshop pool {pool} and lab {lab}'s underlay {subnet} are of different address \
         families; {advice}"
    )]
    Family {
        /// The pool.
        pool: IpNet,
        /// The lab.
        lab: String,
        /// Its underlay.
        subnet: IpNet,
        /// How to choose another pool.
        advice: &'static str,
    },
    /// The pool is not larger than one underlay.
    #[error(
        "the workshop pool {pool} has no room for copies of lab {lab}: each copy takes a \
         /{prefix} like its underlay, so the pool must be shorter than /{prefix}; {advice}"
    )]
    TooSmall {
        /// The pool.
        pool: IpNet,
        /// The lab.
        lab: String,
        /// The underlay's prefix length.
        prefix: u8,
        /// How to choose another pool.
        advice: &'static str,
    },
    /// Not enough free subnets.
    #[error(
        "the workshop pool {pool} has {free} free /{prefix} subnets and {wanted} copies need \
         one each; {advice}"
    )]
    Full {
        /// The pool.
        pool: IpNet,
        /// The underlay's prefix length.
        prefix: u8,
        /// Copies that need one.
        wanted: usize,
        /// Free subnets.
        free: usize,
        /// How to choose another pool.
        advice: &'static str,
    },
    /// The default pool overlaps a network of this host.
    #[error(
        "the default workshop pool {pool} overlaps {route} routed via {dev} on this host; {advice}"
    )]
    DefaultRouted {
        /// The pool.
        pool: IpNet,
        /// The route.
        route: IpNet,
        /// Its device.
        dev: String,
        /// How to choose another pool.
        advice: &'static str,
    },
}

/// Subnets in use on this host: the host's routes, and the underlays of the labs in the state
/// directory with their bridges (which route them once they are up).
#[derive(Debug, Clone, Default)]
pub struct InUse {
    /// The host's routes of the pool's family, the default route left out.
    pub routes: Vec<HostRoute>,
    /// Each lab's underlay and bridge.
    pub labs: Vec<(IpNet, String)>,
    /// Links of those routes that carry a vxlab owner in their alias: bridges of labs run
    /// with another state directory (another instructor's class).
    pub vxlab_links: Vec<String>,
}

fn overlap(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Checks `pool` for `lab`'s copies: family, room, and (for the default pool) no route of this
/// host other than vxlab's own labs' bridges overlapping it, as `up` checks an underlay.
pub fn check_pool(pool: Pool, lab: &Lab, used: &InUse) -> Result<(), PoolError> {
    let subnet = lab.underlay.subnet;
    let advice = pool.advice();
    if pool.net.addr().is_ipv4() != subnet.addr().is_ipv4() {
        return Err(PoolError::Family {
            pool: pool.net,
            lab: lab.name.clone(),
            subnet,
            advice,
        });
    }
    if pool.net.prefix_len() >= subnet.prefix_len() {
        return Err(PoolError::TooSmall {
            pool: pool.net,
            lab: lab.name.clone(),
            prefix: subnet.prefix_len(),
            advice,
        });
    }
    if pool.from == PoolFrom::Default {
        let ours = |dev: &Option<String>| {
            dev.as_ref().is_some_and(|d| {
                used.labs.iter().any(|(_, b)| b == d) || used.vxlab_links.contains(d)
            })
        };
        if let Some(r) = used
            .routes
            .iter()
            .find(|r| overlap(r.dst, pool.net) && !ours(&r.dev))
        {
            return Err(PoolError::DefaultRouted {
                pool: pool.net,
                route: r.dst,
                dev: r.dev.clone().unwrap_or_else(|| "another route".into()),
                advice,
            });
        }
    }
    Ok(())
}

/// `wanted` subnets for `lab`'s copies from `pool`, lowest first, each overlapping no route
/// inside the pool, no lab underlay in use and none of the lab's overlays.
pub fn allocate(
    pool: Pool,
    lab: &Lab,
    used: &InUse,
    wanted: usize,
) -> Result<Vec<IpNet>, PoolError> {
    check_pool(pool, lab, used)?;
    let prefix = lab.underlay.subnet.prefix_len();
    // A route around the whole pool does not take it: a pool named inside a routed network
    // was chosen so (the default pool is refused there, by `check_pool`).
    let around =
        |r: &IpNet| r.prefix_len() <= pool.net.prefix_len() && r.contains(&pool.net.network());
    let taken: Vec<IpNet> = used
        .routes
        .iter()
        .map(|r| r.dst)
        .filter(|r| !around(r))
        .chain(used.labs.iter().map(|(n, _)| *n))
        .chain(
            lab.vxlans
                .iter()
                .flat_map(|v| v.members.iter().map(|m| m.address.trunc())),
        )
        .collect();
    let free = pool
        .net
        .subnets(prefix)
        .expect("the pool is shorter than the prefix")
        .filter(|s| !taken.iter().any(|t| overlap(*s, *t)));
    let picked: Vec<IpNet> = free.take(wanted).collect();
    if picked.len() < wanted {
        return Err(PoolError::Full {
            pool: pool.net,
            prefix,
            wanted,
            free: picked.len(),
            advice: pool.advice(),
        });
    }
    Ok(picked)
}

/// Why the copies of a lab cannot be made. Nothing is created when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    /// The pool cannot give the copies their underlays.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// A copy's name or the lab's names do not allow it.
    #[error("{0}")]
    Instance(String),
}

/// The copies `wanted` (name and number) of lab `base`: a copy that is running keeps the
/// underlay it was given, each other one gets the next free subnet of `pool`.
pub fn copies(
    base: &Lab,
    wanted: &[(String, u8)],
    pool: Pool,
    used: &InUse,
    running: &[Instance],
) -> Result<Vec<Lab>, CopyError> {
    let kept = |name: &str| running.iter().find(|i| i.name == name);
    let new = wanted.iter().filter(|(n, _)| kept(n).is_none()).count();
    let mut fresh = if new == 0 {
        Vec::new()
    } else {
        allocate(pool, base, used, new)?
    }
    .into_iter();
    wanted
        .iter()
        .map(|(name, index)| {
            let (index, underlay) = match kept(name) {
                Some(i) => (i.index, i.underlay),
                None => (*index, fresh.next()),
            };
            instance::derive(base, name, index, underlay).map_err(CopyError::Instance)
        })
        .collect()
}

/// `addr`, a host of `from`, moved to the same place in `to` (same prefix length).
pub fn rebase(addr: IpAddr, from: IpNet, to: IpNet) -> IpAddr {
    match (addr, from.hostmask(), to.network()) {
        (IpAddr::V4(a), IpAddr::V4(m), IpAddr::V4(n)) => {
            IpAddr::V4((u32::from(a) & u32::from(m) | u32::from(n)).into())
        }
        (IpAddr::V6(a), IpAddr::V6(m), IpAddr::V6(n)) => {
            IpAddr::V6((u128::from(a) & u128::from(m) | u128::from(n)).into())
        }
        _ => addr,
    }
}

/// What is in use on this host, for a pool of `pool`'s family.
pub fn in_use(host: &dyn Host, state: &StateDir, ipv6: bool) -> InUse {
    let routes: Vec<HostRoute> = host
        .routes(ipv6)
        .into_iter()
        .filter(|r| r.dst.prefix_len() > 0)
        .collect();
    let mut vxlab_links: Vec<String> = routes
        .iter()
        .filter_map(|r| r.dev.clone())
        .filter(|d| {
            let link = crate::state::Resource::Bridge { name: d.clone() };
            matches!(
                host.probe(&link),
                crate::host::inventory::Presence::Present { owner: Some(_) }
            )
        })
        .collect();
    vxlab_links.sort();
    vxlab_links.dedup();
    let labs = state
        .labs()
        .iter()
        .filter_map(|name| {
            let lab = recorded(state, name)?;
            Some((lab.underlay.subnet, lab.underlay.bridge))
        })
        .collect();
    InUse {
        routes,
        labs,
        vxlab_links,
    }
}

/// A running lab as recorded: its lab file copy, as the copy it is.
fn recorded(state: &StateDir, name: &str) -> Option<Lab> {
    let (lab, _) = crate::lab::load_recorded(&state.lab_dir(name).join(LAB_COPY)).ok()?;
    match state.read(name).ok()?.instance {
        Some(i) => instance::derive(&lab, &i.name, i.index, i.underlay).ok(),
        None => Some(lab),
    }
}

/// The running copies of lab `base`, by their recorded instance.
pub fn running(state: &StateDir, base: &str) -> Vec<Instance> {
    let mut out: Vec<Instance> = state
        .labs()
        .iter()
        .filter_map(|l| state.read(l).ok()?.instance)
        .filter(|i| i.base == base)
        .collect();
    out.sort_by_key(|i| i.index);
    out
}

/// Holds every workshop pool of this host while copies are given underlays and brought up,
/// so two `vxlab up --count` at once (of one state directory or two: two instructors) cannot
/// pick the same subnets; released when dropped.
pub fn lock() -> Result<crate::host::lock::HostLock, crate::host::lock::HostLockError> {
    crate::host::lock::HostLock::take_pool()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Lab {
        let path = format!("{}/labs/two-netns.yaml", env!("CARGO_MANIFEST_DIR"));
        crate::lab::load(std::path::Path::new(&path)).unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn route(dst: &str, dev: &str) -> HostRoute {
        HostRoute {
            dst: net(dst),
            dev: Some(dev.into()),
        }
    }

    fn pool(s: &str) -> Pool {
        Pool {
            net: net(s),
            from: PoolFrom::Flag,
        }
    }

    #[test]
    fn copies_take_the_lowest_free_subnets_of_their_own_size() {
        let used = InUse {
            routes: vec![route("10.100.1.0/24", "eth1")],
            labs: vec![(net("10.100.3.0/24"), "vxbr-other-1".into())],
            ..Default::default()
        };
        let got = allocate(pool("10.100.0.0/16"), &seed(), &used, 3).unwrap();
        assert_eq!(
            got,
            [
                net("10.100.0.0/24"),
                net("10.100.2.0/24"),
                net("10.100.4.0/24")
            ]
        );
    }

    #[test]
    fn two_labs_from_one_pool_are_disjoint() {
        let lab = seed();
        let first = allocate(pool("10.100.0.0/22"), &lab, &InUse::default(), 2).unwrap();
        // The first lab's copies are recorded; the second lab sees them in use.
        let used = InUse {
            routes: Vec::new(),
            labs: first.iter().map(|n| (*n, "br".to_string())).collect(),
            ..Default::default()
        };
        let second = allocate(pool("10.100.0.0/22"), &lab, &used, 2).unwrap();
        assert!(
            second.iter().all(|s| !first.contains(s)),
            "{first:?} {second:?}"
        );
        let err = allocate(pool("10.100.0.0/22"), &lab, &used, 3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the workshop pool 10.100.0.0/22 has 2 free /24 subnets and 3 copies need one \
             each; name another with --pool"
        );
    }

    #[test]
    fn the_default_pool_is_checked_against_the_hosts_routes_but_not_vxlabs_own() {
        let lab = seed();
        let default = Pool::choose(None, &lab).unwrap();
        assert_eq!(default.net, net(DEFAULT_POOL_V4));
        let ours = InUse {
            routes: vec![route("10.100.0.0/24", "vxbr-seed-1")],
            labs: vec![(net("10.100.0.0/24"), "vxbr-seed-1".into())],
            ..Default::default()
        };
        assert_eq!(
            allocate(default, &lab, &ours, 1).unwrap(),
            [net("10.100.1.0/24")]
        );
        let theirs = InUse {
            routes: vec![route("10.0.0.0/8", "eth0")],
            labs: Vec::new(),
            ..Default::default()
        };
        let err = allocate(default, &lab, &theirs, 1).unwrap_err().to_string();
        assert_eq!(
            err,
            "the default workshop pool 10.100.0.0/16 overlaps 10.0.0.0/8 routed via eth0 on this \
             host; name one with --pool, or with `workshop: { pool: … }` in the lab file"
        );
        // Another class's copy, run with another state directory: its bridge says it is
        // vxlab's, and the pool goes on around it.
        let other_class = InUse {
            routes: vec![route("10.100.0.0/24", "vxbr-x-1")],
            vxlab_links: vec!["vxbr-x-1".into()],
            ..Default::default()
        };
        assert_eq!(
            allocate(default, &lab, &other_class, 1).unwrap(),
            [net("10.100.1.0/24")]
        );
        // A pool the user named inside a routed network is theirs to choose; routes inside
        // it are skipped.
        let inside = InUse {
            routes: vec![route("10.0.0.0/8", "eth0"), route("10.100.0.0/23", "eth1")],
            labs: Vec::new(),
            ..Default::default()
        };
        assert_eq!(
            allocate(pool("10.100.0.0/16"), &lab, &inside, 1).unwrap(),
            [net("10.100.2.0/24")]
        );
    }

    #[test]
    fn a_pool_must_hold_the_underlay_and_match_its_family() {
        let lab = seed();
        let small = allocate(pool("10.100.0.0/24"), &lab, &InUse::default(), 1);
        assert!(matches!(small, Err(PoolError::TooSmall { prefix: 24, .. })));
        let v6 = allocate(pool("fd00::/48"), &lab, &InUse::default(), 1);
        assert!(matches!(v6, Err(PoolError::Family { .. })));
    }

    #[test]
    fn the_overlays_are_never_an_underlay() {
        // The seed's overlay is 192.168.42.0/24: a pool around it skips that subnet.
        let got = allocate(pool("192.168.40.0/22"), &seed(), &InUse::default(), 4);
        assert!(
            matches!(got, Err(PoolError::Full { free: 3, .. })),
            "{got:?}"
        );
    }

    #[test]
    fn a_running_copy_keeps_its_underlay_and_new_ones_get_free_subnets() {
        let lab = seed();
        let running = vec![Instance {
            base: "two-netns".into(),
            name: "1".into(),
            index: 1,
            underlay: Some(net("10.100.5.0/24")),
        }];
        let used = InUse {
            routes: vec![route("10.100.5.0/24", "vxbr-seed-1")],
            labs: vec![(net("10.100.5.0/24"), "vxbr-seed-1".into())],
            ..Default::default()
        };
        let wanted = [("1".to_string(), 1), ("2".to_string(), 2)];
        let labs = copies(&lab, &wanted, pool("10.100.0.0/16"), &used, &running).unwrap();
        assert_eq!(labs[0].underlay.subnet, net("10.100.5.0/24"));
        assert_eq!(labs[0].guests[1].address.to_string(), "10.100.5.3");
        assert_eq!(labs[1].underlay.subnet, net("10.100.0.0/24"));
        assert_eq!(labs[1].underlay.gateway.to_string(), "10.100.0.1");
        assert_eq!(labs[1].name, "two-netns-2");
        assert_eq!(
            labs[1].instance.as_ref().unwrap().underlay,
            Some(net("10.100.0.0/24"))
        );
        assert_eq!(labs[1].vxlans, lab.vxlans);
    }

    #[test]
    fn addresses_keep_their_place_in_the_subnet() {
        let (from, to) = (net("192.168.10.0/24"), net("10.100.7.0/24"));
        assert_eq!(
            rebase("192.168.10.3".parse().unwrap(), from, to),
            "10.100.7.3".parse::<IpAddr>().unwrap()
        );
        let (from, to) = (net("fd00:10::/64"), net("fd00:100:0:9::/64"));
        assert_eq!(
            rebase("fd00:10::2".parse().unwrap(), from, to),
            "fd00:100:0:9::2".parse::<IpAddr>().unwrap()
        );
    }
}
