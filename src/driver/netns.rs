//! Guests as network namespaces on this host: a veth pair per guest, the host end on the lab's
//! bridge and the guest end named as the lab's underlay interface.

mod batch;

use std::path::PathBuf;
use std::sync::Arc;

use super::{Driver, DriverError};
use crate::guest_command::GuestCommand;
use crate::host::icmp;
use crate::host::netlink::{netns_path, Netlink};
use crate::host::process::{self, Output};
use crate::host::spawn;
use crate::iproute2::Tools;
use crate::plan::{GuestPlan, PingPlan, Plan};
use crate::state::{Resource, StateDir};
use crate::terminal::{GuestProcess, Launch};

/// How long a ping waits for its reply, as `ping -W 1`.
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The names of the vxlab namespaces on this host, whichever lab they belong to.
pub fn running_guests() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("vxlab-"))
        .collect();
    out.sort();
    out
}

/// The namespace driver.
pub struct NetnsDriver {
    netlink: Arc<Netlink>,
}

impl NetnsDriver {
    /// A driver that uses `netlink` for links and namespaces.
    pub fn new(netlink: Arc<Netlink>) -> Self {
        NetnsDriver { netlink }
    }

    /// A guest whose namespace is gone (deleted by hand) is not running: said so, rather than
    /// as a program that could not start in it ("starting bash: No such file or directory").
    fn present(&self, guest: &GuestPlan) -> Result<(), DriverError> {
        if netns_path(&guest.instance).exists() {
            return Ok(());
        }
        Err(DriverError::new(
            &guest.name,
            "reaching it",
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "{} is not running: its namespace {} is gone; a reset of {} creates it anew",
                    guest.name, guest.instance, guest.name
                ),
            ),
        ))
    }
}

impl Driver for NetnsDriver {
    fn guest_resources(&self, guest: &GuestPlan) -> Vec<Resource> {
        // Reverse order at `down`: the host link goes first, which deletes its peer at once;
        // leaving that to the namespace's deletion is asynchronous and makes a quick second
        // `up` fail with "File exists".
        vec![
            Resource::Netns {
                name: guest.instance.clone(),
            },
            Resource::HostLink {
                name: guest.host_link.clone(),
            },
        ]
    }

    fn create_guest(
        &self,
        plan: &Plan,
        guest: &GuestPlan,
        progress: &dyn Fn(&str),
    ) -> Result<(), DriverError> {
        progress("creating namespace");
        self.netlink
            .add_netns(&guest.instance)
            .map_err(|e| DriverError::new(&guest.name, "creating its namespace", e))?;
        progress("plugging into the bridge");
        self.netlink
            .add_veth(
                &guest.host_link,
                &plan.bridge,
                // A fixed MAC: a guest created anew keeps it, so its peers' neighbour entries
                // for its underlay address stay right.
                (&guest.interface, guest.underlay_mac.0),
                &guest.instance,
            )
            .map_err(|e| DriverError::new(&guest.name, "creating its underlay link", e))
    }

    fn exec(&self, guest: &GuestPlan, argv: &[String]) -> Result<Output, DriverError> {
        self.present(guest)?;
        process::run(argv, Some(&netns_path(&guest.instance)))
            .map_err(|e| DriverError::new(&guest.name, format!("running {}", argv[0]), e))
    }

    /// Consecutive `ip` or `bridge` commands go as one `ip -batch` process each: a process is
    /// a namespace guest's round trip.
    fn exec_batch(
        &self,
        guest: &GuestPlan,
        tools: &Tools,
        cmds: &[GuestCommand],
        stop_on_failure: bool,
    ) -> Result<Vec<Output>, DriverError> {
        self.present(guest)?;
        let ns = netns_path(&guest.instance);
        let mut outs = Vec::with_capacity(cmds.len());
        for run in batch::runs(cmds) {
            let got = if run.batched {
                let force = !stop_on_failure;
                let (argv, input) = batch::batch_command(run.cmds, tools, force);
                let out = process::run_with_input(&argv, Some(&ns), Some(&input)).map_err(|e| {
                    DriverError::new(&guest.name, format!("running {}", argv[0]), e)
                })?;
                batch::split(run.cmds, &out, force)
            } else {
                vec![self.exec(guest, &run.cmds[0].argv(tools))?]
            };
            let failed = got.iter().any(|o| !o.success());
            outs.extend(got);
            if failed && stop_on_failure {
                break;
            }
        }
        Ok(outs)
    }

    /// The same echo requests as the planned `ping -c 1 -W 1`, sent from a raw socket inside
    /// the guest's namespace: a full mesh of 50 guests costs milliseconds instead of 2450
    /// processes.
    fn ping(&self, guest: &GuestPlan, pings: &[PingPlan]) -> Result<Vec<bool>, DriverError> {
        let targets: Vec<_> = pings.iter().map(|p| (p.to, p.tries())).collect();
        icmp::ping_from(&netns_path(&guest.instance), &targets, PING_TIMEOUT)
            .map_err(|e| DriverError::new(&guest.name, "sending echo requests", e))
    }

    fn builds_on_host(&self) -> bool {
        true
    }

    fn remove(&self, resource: &Resource) -> Result<bool, DriverError> {
        match resource {
            Resource::Netns { name } => self
                .netlink
                .delete_netns(name)
                .map_err(|e| DriverError::new(name, "deleting its namespace", e)),
            _ => Ok(false),
        }
    }

    fn guest_exists(&self, guest: &GuestPlan) -> bool {
        netns_path(&guest.instance).exists()
    }

    fn parallel_commands(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        cores * 8
    }

    /// A process in the guest's namespace; a confined one does not see the other namespaces
    /// or vxlab's state (see [`crate::host::spawn`]).
    fn spawn(&self, guest: &GuestPlan, launch: &Launch) -> Result<GuestProcess, DriverError> {
        // The state directory in use and the default one: either may hold labs' secrets.
        self.present(guest)?;
        let hide = [
            PathBuf::from("/run/netns"),
            StateDir::from_env().root().to_path_buf(),
            PathBuf::from("/var/lib/vxlab"),
        ];
        spawn::spawn(launch, &netns_path(&guest.instance), &guest.name, &hide)
            .map_err(|e| DriverError::new(&guest.name, format!("starting {}", launch.argv[0]), e))
    }
}
