//! The engine against recording fakes of the host and the guests: nothing on this machine is
//! touched. Guests answer reads with states recorded from real labs
//! (`tests/fixtures/states/`), so what the engine runs follows from real kernel output.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;

use super::*;
use crate::converge::{Kind, Layer};
use crate::host::process::Output;
use crate::host::{Change, ClaimError, Frames, HostLockError, HostRoute, NeighbourNeeds, Presence};
use crate::plan::PingPlan;

/// Records what the engine asks of the host.
#[derive(Default)]
struct FakeHost {
    calls: Mutex<Vec<String>>,
    /// Rules of the fence missing now (its `fence` puts them back).
    fence_missing: Mutex<usize>,
    /// The host of a class it stands for; `None`: this machine.
    remote: Option<String>,
}

impl FakeHost {
    fn log(&self, what: String) {
        self.calls.lock().unwrap().push(what);
    }
}

impl Host for FakeHost {
    fn ensure_bridge(&self, name: &str, _: IpNet) -> Result<(), NetlinkError> {
        self.log(format!("bridge {name}"));
        Ok(())
    }
    fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        self.log(format!("del {name}"));
        Ok(true)
    }
    fn delete_links(&self, names: &[String]) -> Result<usize, NetlinkError> {
        self.log(format!("del {}", names.join(",")));
        Ok(names.len())
    }
    fn plug(&self, link: &str, bridge: &str) -> Result<(), NetlinkError> {
        self.log(format!("plug {link} {bridge}"));
        Ok(())
    }
    fn set_alias(&self, name: &str, alias: &str) -> Result<(), NetlinkError> {
        self.log(format!("alias {name} {alias}"));
        Ok(())
    }
    fn probe(&self, r: &Resource) -> Presence {
        // A link that another lab's alias names (the one case tests need).
        match r {
            Resource::Bridge { name } if name == "vxbr-other" => Presence::Present {
                owner: Some("lab other".into()),
            },
            // The host's own uplink: a link with no vxlab alias.
            Resource::Bridge { name } if name == "eth0" => Presence::Present { owner: None },
            _ => Presence::Absent,
        }
    }
    fn routes(&self, _: bool) -> Vec<HostRoute> {
        self.log("routes".into());
        Vec::new()
    }
    fn exclusive(&self) -> Result<Box<dyn Send>, HostLockError> {
        Ok(Box::new(()))
    }
    fn claim_neighbours(&self, _: &str, needs: NeighbourNeeds) -> Result<Vec<Change>, ClaimError> {
        self.log(format!("claim {} {}", needs.ipv4, needs.ipv6));
        Ok(Vec::new())
    }
    fn release_neighbours(&self, _: &str) -> Result<Vec<Change>, ClaimError> {
        self.log("release".into());
        Ok(Vec::new())
    }
    fn fence(&self, bridge: &str, _: &str) -> io::Result<usize> {
        self.log(format!("fence {bridge}"));
        Ok(std::mem::take(&mut *self.fence_missing.lock().unwrap()))
    }
    fn fence_seen(&self, _: &str, _: &str) -> io::Result<crate::host::firewall::FenceSeen> {
        Ok(crate::host::firewall::FenceSeen {
            missing: *self.fence_missing.lock().unwrap(),
            of: 14,
        })
    }
    fn unfence(&self, bridge: &str, _: &str) -> io::Result<usize> {
        self.log(format!("unfence {bridge}"));
        Ok(0)
    }
    fn write_sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        self.log(format!("sysctl {key}={value}"));
        Ok(())
    }
    fn capture(&self, _: &str, _: Duration) -> io::Result<Box<dyn Frames>> {
        Err(io::Error::other("no captures in tests"))
    }
    fn bridge_resource(&self, bridge: &str) -> Resource {
        match &self.remote {
            Some(host) => Resource::Network {
                host: host.clone(),
                bridge: bridge.to_string(),
            },
            None => Resource::Bridge {
                name: bridge.to_string(),
            },
        }
    }
}

/// Guests that answer reads from recorded states and record every other command.
struct FakeGuests {
    /// The recorded state each guest reports, by guest name.
    states: BTreeMap<String, serde_json::Value>,
    state_dir: StateDir,
    ran: Mutex<Vec<String>>,
}

impl FakeGuests {
    fn new(state_dir: &StateDir, states: &[(&str, &str)]) -> Arc<Self> {
        let states = states
            .iter()
            .map(|(g, name)| {
                let text = crate::fixture(&format!("states/{name}.json"));
                (g.to_string(), serde_json::from_str(&text).unwrap())
            })
            .collect();
        Arc::new(FakeGuests {
            states,
            state_dir: state_dir.clone(),
            ran: Mutex::default(),
        })
    }

    /// The commands that changed something, as `guest: command`.
    fn changes(&self) -> Vec<String> {
        self.ran.lock().unwrap().clone()
    }
}

fn ok(stdout: &str, stderr: &str) -> Output {
    Output {
        status: 0,
        stdout: stdout.into(),
        stderr: stderr.into(),
    }
}

impl Driver for Arc<FakeGuests> {
    fn guest_resources(&self, g: &GuestPlan) -> Vec<Resource> {
        vec![Resource::Domain {
            name: g.instance.clone(),
            host: None,
        }]
    }
    fn create_guest(
        &self,
        plan: &Plan,
        g: &GuestPlan,
        _: &dyn Fn(&str),
    ) -> Result<(), DriverError> {
        // The resource must be in the state file before the guest exists.
        let st = self.state_dir.read(&plan.lab).unwrap();
        assert!(st.resources.contains(&Resource::Domain {
            name: g.instance.clone(),
            host: None,
        }));
        Ok(())
    }
    fn exec(&self, g: &GuestPlan, argv: &[String]) -> Result<Output, DriverError> {
        let st = &self.states[&g.name];
        let words: Vec<&str> = argv.iter().map(String::as_str).collect();
        // A device the guest does not have has nothing to show: the command fails.
        let dump = |v: &serde_json::Value| {
            if v.is_null() {
                Output {
                    status: 1,
                    stdout: String::new(),
                    stderr: "Cannot find device".into(),
                }
            } else {
                ok(&v.to_string(), "")
            }
        };
        Ok(match words[..] {
            ["uname", "-r"] => ok("6.1.0-27-amd64", ""),
            ["sh", ..] => ok("", ""),
            ["ip", "link", "help"] => ok("", "TYPE := { bridge | vxlan }"),
            ["ip", "-j", "link", "show", "dev", "lo"] => ok("[{}]", ""),
            ["ip", "-V"] => ok("ip utility, iproute2-6.1.0", ""),
            ["ip", "-j", "-d", "link", "show"] => dump(&st["links"]),
            ["ip", "-j", "-d", "addr", "show"] => dump(&st["addresses"]),
            ["ip", "-j", "-d", "route", "show"] => dump(&st["routes"]),
            ["ip", "-j", "-d", "maddr", "show", "dev", _] => dump(&st["groups"]),
            ["bridge", "-j", "fdb", "show", "dev", d] => dump(&st["fdb"][d]),
            ["ip", "-j", "-d", "neigh", "show", "dev", d] => dump(&st["neighbours"][d]),
            _ => {
                let line = format!("{}: {}", g.name, crate::guest_command::shell_words(argv));
                self.ran.lock().unwrap().push(line);
                ok("", "")
            }
        })
    }
    fn ping(&self, _: &GuestPlan, pings: &[PingPlan]) -> Result<Vec<bool>, DriverError> {
        Ok(vec![true; pings.len()])
    }
    fn remove(&self, r: &Resource) -> Result<bool, DriverError> {
        self.ran.lock().unwrap().push(format!("remove {r:?}"));
        Ok(true)
    }
    fn guest_exists(&self, _: &GuestPlan) -> bool {
        true
    }
    fn parallel_commands(&self) -> usize {
        2
    }
}

fn seed() -> (Plan, String) {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/labs/two-netns.yaml"))
        .unwrap();
    let lab = crate::lab::parse(&text, Path::new("two-netns.yaml")).unwrap();
    (crate::plan::plan(&lab), text)
}

/// An engine keeping its state in `state`, over guests that report `states`.
fn engine_in(
    state: &StateDir,
    states: &[(&str, &str)],
) -> (Engine, Arc<FakeGuests>, Arc<FakeHost>) {
    let guests = FakeGuests::new(state, states);
    let host = Arc::new(FakeHost::default());
    let engine = Engine::new(Box::new(guests.clone()), host.clone(), state.clone());
    (engine, guests, host)
}

fn engine(states: &[(&str, &str)]) -> (Engine, Arc<FakeGuests>, Arc<FakeHost>, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let (engine, guests, host) = engine_in(&StateDir::at(tmp.path()), states);
    (engine, guests, host, tmp)
}

/// What `down` of the seed lab (two guests) asks of the guests and the host: the guests in
/// reverse, then the host links, the fence, the bridge, the neighbour claim.
fn removed_the_seed_lab(guests: &FakeGuests, host: &FakeHost) {
    assert_eq!(
        guests.changes(),
        [
            "remove Domain { name: \"vxlab-two-netns.vm-b\", host: None }",
            "remove Domain { name: \"vxlab-two-netns.vm-a\", host: None }",
        ]
    );
    assert_eq!(
        *host.calls.lock().unwrap(),
        ["del ", "unfence vxbr-seed", "del vxbr-seed", "release"]
    );
}

fn up(engine: &Engine, plan: &Plan, text: &str) -> Outcome {
    engine
        .up(plan, Path::new("two-netns.yaml"), text, &Progress::hidden())
        .unwrap()
}

#[test]
fn down_leaves_alone_what_a_forged_state_file_names() {
    let (plan, text) = seed();
    let (engine, guests, host, _tmp) =
        engine(&[("vm-a", "seed-fresh-vm-a"), ("vm-b", "seed-fresh-vm-a")]);
    up(&engine, &plan, &text);
    let lock = engine.state.lock("two-netns").unwrap();
    let mut st = lock.load().unwrap().unwrap();
    st.resources.extend([
        Resource::Netns {
            name: "../../etc/passwd".into(),
        },
        Resource::Sysctl {
            key: "kernel.core_pattern".into(),
            previous: "|/bin/sh".into(),
        },
        Resource::HostLink {
            name: "eth0".into(),
        },
        Resource::Bridge {
            name: "vxbr-other".into(),
        },
        Resource::Bridge {
            name: "eth0".into(),
        },
    ]);
    lock.save(&st).unwrap();
    drop(lock);
    guests.ran.lock().unwrap().clear();
    host.calls.lock().unwrap().clear();

    let notes = engine.down("two-netns").unwrap();
    // The lab's own resources go; nothing the forged entries name is touched.
    removed_the_seed_lab(&guests, &host);
    let left: Vec<&String> = notes
        .iter()
        .filter(|n| n.starts_with("left alone"))
        .collect();
    assert_eq!(left.len(), 5, "{notes:#?}");
    assert!(
        left[0].contains("\"../../etc/passwd\", which vxlab never makes"),
        "{}",
        left[0]
    );
    assert!(
        left[3].contains("bridge \"vxbr-other\" belongs to lab other"),
        "{}",
        left[3]
    );
    assert!(
        left[4].contains("bridge \"eth0\" carries no vxlab alias"),
        "{}",
        left[4]
    );
    assert!(engine.state.labs().is_empty());
}

#[test]
fn a_second_up_of_a_healthy_lab_runs_no_configuration_command() {
    let (plan, text) = seed();
    let (engine, guests, _, _tmp) =
        engine(&[("vm-a", "seed-healthy-vm-a"), ("vm-b", "seed-healthy-vm-b")]);
    let o = up(&engine, &plan, &text);
    assert_eq!(guests.changes(), Vec::<String>::new());
    assert!(o.verdict.ok(), "{:#?}", o.verdict.failures);
    assert!(o.repairs.is_empty());
}

#[test]
fn a_fence_missing_rules_fails_the_check_on_the_host_and_up_puts_it_back() {
    let (plan, text) = seed();
    let (engine, guests, host, _tmp) =
        engine(&[("vm-a", "seed-healthy-vm-a"), ("vm-b", "seed-healthy-vm-b")]);
    up(&engine, &plan, &text);
    *host.fence_missing.lock().unwrap() = 3;
    let o = engine.check(&plan).unwrap();
    // One failure, of no guest, the only cause; the guests' checks all hold.
    assert_eq!(o.verdict.failures.len(), 1, "{:#?}", o.verdict.failures);
    let f = &o.verdict.failures[0];
    assert_eq!((f.kind, f.layer), (Kind::Fence, Layer::Host));
    assert_eq!((f.guest.as_str(), f.place()), ("", "host"));
    assert_eq!(f.seen, "3 of 14 missing");
    assert_eq!(f.fix.to_string(), "`vxlab up two-netns`");
    assert_eq!(o.verdict.diagnoses.len(), 1);
    assert!(o.verdict.diagnoses[0].symptoms.is_empty());
    assert_eq!(o.host.fence.map(|f| f.missing), Some(3));
    // The quick check of `status` sees it too.
    assert!(!engine.quick_check(&plan, &mut Vec::new()).unwrap().ok());
    // `up` puts the rules back, says so, and changes nothing in the guests.
    guests.ran.lock().unwrap().clear();
    let o = up(&engine, &plan, &text);
    assert!(o.verdict.ok(), "{:#?}", o.verdict.failures);
    assert!(
        o.notes
            .iter()
            .any(|n| n.contains("repaired on the host: 3 of the firewall rules")),
        "{:#?}",
        o.notes
    );
    assert_eq!(guests.changes(), Vec::<String>::new());
}

#[test]
fn up_on_a_flushed_fdb_runs_only_the_flood_entry_and_says_why() {
    let (plan, text) = seed();
    let (engine, guests, _, _tmp) =
        engine(&[("vm-a", "seed-healthy-vm-a"), ("vm-b", "seed-healthy-vm-b")]);
    up(&engine, &plan, &text);
    // The next `up` finds vm-a's FDB flushed.
    let (engine2, guests2, _) = engine_in(
        &engine.state,
        &[
            ("vm-a", "seed-fdb-flushed-vm-a"),
            ("vm-b", "seed-healthy-vm-b"),
        ],
    );
    let o = up(&engine2, &plan, &text);
    assert_eq!(guests.changes(), Vec::<String>::new());
    assert_eq!(
        guests2.changes(),
        ["vm-a: bridge fdb append 00:00:00:00:00:00 dev vxlan0 dst 239.1.1.1 via eth0"]
    );
    assert_eq!(o.repairs.len(), 1);
    assert_eq!(o.repairs[0].guest, "vm-a");
    assert!(o.repairs[0].step.why.contains("flood entry to 239.1.1.1"));
}

#[test]
fn up_records_each_guest_before_creating_it_and_down_removes_all_in_reverse() {
    let (plan, text) = seed();
    let (engine, guests, host, tmp) =
        engine(&[("vm-a", "seed-fresh-vm-a"), ("vm-b", "seed-fresh-vm-a")]);
    up(&engine, &plan, &text);
    // A fresh guest gets the plan's commands, in order.
    let want: Vec<String> = plan.guests[0]
        .steps
        .iter()
        .map(|s| format!("vm-a: {}", s.command))
        .collect();
    let got: Vec<String> = guests
        .changes()
        .into_iter()
        .filter(|c| c.starts_with("vm-a"))
        .collect();
    assert_eq!(got, want);
    assert!(host
        .calls
        .lock()
        .unwrap()
        .contains(&"bridge vxbr-seed".to_string()));
    guests.ran.lock().unwrap().clear();
    host.calls.lock().unwrap().clear();

    engine.down("two-netns").unwrap();
    removed_the_seed_lab(&guests, &host);
    assert!(engine.state.labs().is_empty());
    assert!(!tmp.path().join("two-netns").exists());
}

#[test]
fn a_lab_placed_on_another_host_records_it_and_its_bridge_there_which_down_removes() {
    let (plan, text) = seed();
    let tmp = tempfile::tempdir().unwrap();
    let state = StateDir::at(tmp.path());
    let guests = FakeGuests::new(
        &state,
        &[("vm-a", "seed-healthy-vm-a"), ("vm-b", "seed-healthy-vm-b")],
    );
    let host = Arc::new(FakeHost {
        remote: Some("h2".into()),
        ..Default::default()
    });
    let spec = HostSpec {
        name: "h2".into(),
        uri: "qemu+ssh://root@10.0.0.12/system".into(),
        ssh: None,
    };
    let engine = Engine::new(Box::new(guests.clone()), host.clone(), state.clone())
        .placed_on(Some(spec.clone()));
    up(&engine, &plan, &text);
    let st = state.read("two-netns").unwrap();
    assert_eq!(st.host, Some(spec));
    let network = Resource::Network {
        host: "h2".into(),
        bridge: "vxbr-seed".into(),
    };
    assert!(st.resources.contains(&network), "{:?}", st.resources);
    assert!(!st
        .resources
        .iter()
        .any(|r| matches!(r, Resource::Bridge { .. })));
    host.calls.lock().unwrap().clear();
    engine.down("two-netns").unwrap();
    assert!(host
        .calls
        .lock()
        .unwrap()
        .contains(&"del vxbr-seed".to_string()));
    assert!(state.labs().is_empty());
}

#[test]
fn a_bridge_the_lab_did_not_create_is_refused_before_anything_is_written() {
    /// A host where every name vxlab wants already exists, made by the lab it names.
    struct Taken(FakeHost, &'static str);
    impl Host for Taken {
        fn ensure_bridge(&self, n: &str, a: IpNet) -> Result<(), NetlinkError> {
            self.0.ensure_bridge(n, a)
        }
        fn delete_link(&self, n: &str) -> Result<bool, NetlinkError> {
            self.0.delete_link(n)
        }
        fn delete_links(&self, n: &[String]) -> Result<usize, NetlinkError> {
            self.0.delete_links(n)
        }
        fn set_alias(&self, n: &str, a: &str) -> Result<(), NetlinkError> {
            self.0.set_alias(n, a)
        }
        fn plug(&self, l: &str, b: &str) -> Result<(), NetlinkError> {
            self.0.plug(l, b)
        }
        fn probe(&self, _: &Resource) -> Presence {
            Presence::Present {
                owner: Some(self.1.into()),
            }
        }
        fn routes(&self, v6: bool) -> Vec<HostRoute> {
            self.0.routes(v6)
        }
        fn exclusive(&self) -> Result<Box<dyn Send>, HostLockError> {
            self.0.exclusive()
        }
        fn fence(&self, b: &str, l: &str) -> io::Result<usize> {
            self.0.fence(b, l)
        }
        fn unfence(&self, b: &str, l: &str) -> io::Result<usize> {
            self.0.unfence(b, l)
        }
        fn fence_seen(&self, b: &str, l: &str) -> io::Result<crate::host::firewall::FenceSeen> {
            self.0.fence_seen(b, l)
        }
        fn claim_neighbours(&self, i: &str, n: NeighbourNeeds) -> Result<Vec<Change>, ClaimError> {
            self.0.claim_neighbours(i, n)
        }
        fn release_neighbours(&self, i: &str) -> Result<Vec<Change>, ClaimError> {
            self.0.release_neighbours(i)
        }
        fn write_sysctl(&self, k: &str, v: &str) -> io::Result<()> {
            self.0.write_sysctl(k, v)
        }
        fn capture(&self, l: &str, p: Duration) -> io::Result<Box<dyn Frames>> {
            self.0.capture(l, p)
        }
    }
    let (plan, text) = seed();
    let refused = |owner: &'static str| {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::at(tmp.path());
        let guests = FakeGuests::new(&state, &[]);
        let engine = Engine::new(
            Box::new(guests.clone()),
            Arc::new(Taken(FakeHost::default(), owner)),
            state,
        );
        let e = engine
            .up(
                &plan,
                Path::new("two-netns.yaml"),
                &text,
                &Progress::hidden(),
            )
            .unwrap_err();
        assert!(e.before_anything(), "{e}");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
        e.to_string()
    };
    let e = refused("lab other");
    assert!(
        e.contains("bridge vxbr-seed (and 2 more of the lab's names) already exists"),
        "{e}"
    );
    assert!(e.contains("(it belongs to lab other)"), "{e}");
    // A lab of the same name under another state directory is named as such.
    let e = refused("lab two-netns, guest vm-a");
    assert!(
        e.contains(
            "already exists on this host, made by another lab named two-netns, guest vm-a: one \
             brought up with another state directory (`--state-dir`, `VXLAB_STATE_DIR`), or \
             whose state was removed; choose another `underlay.bridge`"
        ),
        "{e}"
    );
}
