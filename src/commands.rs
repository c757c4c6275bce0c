//! One function per `vxlab` subcommand: resolve the lab, pick the driver, call the engine, print.
//! Errors get context here, from the outermost operation down.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::builder::Recipe;
use crate::driver::libvirt::image::{self, Image, ImageError};
use crate::driver::libvirt::remote::{self, host::RemoteHost, HostUnreachable};
use crate::driver::libvirt::{capacity, LibvirtDriver, OpenError};
use crate::driver::netns::NetnsDriver;
use crate::driver::Driver;
use crate::engine::{Engine, EngineError};
use crate::host::netlink::Netlink;
use crate::host::{process, Host, LocalHost};
use crate::hosts::HostSpec;
use crate::lab::{self, instance, DriverKind, Lab, LabError, LoadError};
use crate::outcome::Outcome;
use crate::plan::{self, Plan};
use crate::progress::Progress;
use crate::report;
use crate::state::{StateDir, StateError, LAB_COPY};
use crate::workshop;

pub mod hosts;
mod serve;
mod sheet;
mod shell;
mod status;
mod teach;

pub use serve::{serve, LocalLabs, ServeArgs};
pub use sheet::{sheet, SheetFormat};
pub use shell::{exec, shell};
pub use status::status;
pub use teach::{capture, graph, show, walk, CaptureOptions};

/// Exit statuses, after sysexits where one fits.
pub mod exit {
    /// Everything held.
    pub const OK: u8 = 0;
    /// The lab runs but a check failed.
    pub const CHECK_FAILED: u8 = 1;
    /// The command line could not be parsed (clap's own usage errors).
    pub const PARSE: u8 = 2;
    /// `exec`: the command cannot be run in the guest (as a shell says it).
    pub const NOT_EXECUTABLE: u8 = 126;
    /// `exec`: the command is not in the guest (as a shell says it).
    pub const NOT_FOUND: u8 = 127;
    /// A command-line value that cannot be used, such as a workshop pool with no room.
    pub const USAGE: u8 = 64;
    /// The lab file is invalid.
    pub const DATA: u8 = 65;
    /// The lab named cannot be found: no such file, or no such running lab.
    pub const NOINPUT: u8 = 66;
    /// A program or service vxlab needs is missing.
    pub const UNAVAILABLE: u8 = 69;
    /// Any other failure.
    pub const SOFTWARE: u8 = 70;
    /// Another vxlab holds the lab; try again later.
    pub const TEMPFAIL: u8 = 75;
    /// vxlab must run as root.
    pub const NOPERM: u8 = 77;
    /// The name is another lab's: its state, or a resource on the host (sysexits' CANTCREAT).
    pub const TAKEN: u8 = 73;
    /// Stopped by Ctrl-C or SIGTERM, as shells report a SIGINT.
    pub const INTERRUPTED: u8 = 130;
}

/// A precondition on the host that is not met.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Not root.
    #[error("vxlab {0} needs root: {why}; run it as root", why = why_root(.0))]
    NotRoot(&'static str),
    /// A program is missing.
    #[error("`{0}` is not installed; install the Debian package {1}")]
    MissingProgram(&'static str, &'static str),
    /// A file or directory only root may read.
    #[error("cannot read {what} {} as this user: run vxlab as root", path.display())]
    CannotRead {
        /// What it is.
        what: &'static str,
        /// Where.
        path: PathBuf,
    },
}

/// Something named on the command line is not there (exit 66), said in full.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotFound(pub String);

/// The command line does not say enough, or says something that cannot be used (exit 64).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// A state error, as itself or inside an engine error (which is transparent: the chain of
/// causes does not list it again).
fn state_error<'a>(cause: &'a (dyn std::error::Error + 'static)) -> Option<&'a StateError> {
    match cause.downcast_ref::<EngineError>() {
        Some(EngineError::State(e)) => Some(e),
        _ => cause.downcast_ref(),
    }
}

/// The host lock's error, as itself or inside an engine error.
fn host_lock_error<'a>(
    cause: &'a (dyn std::error::Error + 'static),
) -> Option<&'a crate::host::lock::HostLockError> {
    match cause.downcast_ref::<EngineError>() {
        Some(EngineError::HostLock(e)) => Some(e),
        _ => cause.downcast_ref(),
    }
}

/// The exit status for an error, by its kind anywhere in the chain.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    // A context is found by anyhow's own downcast, not in the chain of causes.
    if let Some(e) = e.downcast_ref::<shell::NotStarted>() {
        return e.code;
    }
    for cause in e.chain() {
        let state = state_error(cause);
        if matches!(state, Some(StateError::Reshaped { .. }))
            || cause.is::<LabError>()
            || cause.is::<crate::hosts::inventory::InventoryError>()
        {
            return exit::DATA;
        }
        if cause.is::<crate::hosts::placement::DoesNotFit>()
            || cause.is::<crate::driver::libvirt::capacity::ClassTooBig>()
        {
            return exit::USAGE;
        }
        if cause.is::<hosts::Unreachable>()
            || cause.is::<hosts::NotReady>()
            || cause.is::<HostUnreachable>()
        {
            return exit::UNAVAILABLE;
        }
        if cause.is::<workshop::PoolError>() {
            return exit::USAGE;
        }
        let missing = matches!(cause.downcast_ref(), Some(LoadError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound)
            || matches!(state, Some(StateError::NotRunning(..)));
        if missing
            || cause.is::<NotFound>()
            || matches!(cause.downcast_ref(), Some(EngineError::NoSuchGuest { .. }))
        {
            return exit::NOINPUT;
        }
        if cause.is::<Usage>() {
            return exit::USAGE;
        }
        if matches!(state, Some(StateError::Busy { .. })) {
            return exit::TEMPFAIL;
        }
        if matches!(state, Some(StateError::Taken { .. })) {
            return exit::TAKEN;
        }
        // Ctrl-C while waiting for another vxlab's host lock is an interruption too.
        let stopped_waiting = host_lock_error(cause)
            .is_some_and(|e| e.source.kind() == std::io::ErrorKind::Interrupted);
        if matches!(cause.downcast_ref(), Some(EngineError::Interrupted)) || stopped_waiting {
            return exit::INTERRUPTED;
        }
        if cause.is::<OpenError>()
            || matches!(cause.downcast_ref(), Some(EngineError::NotReady { .. }))
            || matches!(
                cause.downcast_ref(),
                Some(ImageError::NotBuilt { .. } | ImageError::Stale { .. })
            )
        {
            return exit::UNAVAILABLE;
        }
        match cause.downcast_ref::<HostError>() {
            Some(HostError::NotRoot(_)) => return exit::NOPERM,
            Some(HostError::MissingProgram(..)) => return exit::UNAVAILABLE,
            Some(HostError::CannotRead { .. }) => return exit::NOPERM,
            None => {}
        }
    }
    exit::SOFTWARE
}

fn load(path: &Path) -> Result<Lab> {
    load_with_text(path).map(|(lab, _)| lab)
}

/// The lab in `path` and the text it was read from: the text `up` keeps is the one validated.
fn load_with_text(path: &Path) -> Result<(Lab, String)> {
    lab::load_with_text(path).map_err(load_error)
}

/// A running lab's recorded copy (see [`lab::Rules::Recorded`]) and its text.
fn load_recorded(path: &Path) -> Result<(Lab, String)> {
    lab::load_recorded(path).map_err(load_error)
}

/// An invalid lab is the lab's error itself (exit 65 by its kind); others as they are.
fn load_error(e: LoadError) -> anyhow::Error {
    match e {
        LoadError::Invalid(invalid) => anyhow::Error::new(invalid),
        other => anyhow::Error::new(other),
    }
}

/// Whether vxlab runs as root.
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Why `vxlab COMMAND` needs root, said of what that command does: a command that only
/// reads says so.
fn why_root(command: &str) -> &'static str {
    match command {
        "up" | "walk" => "it creates the lab's bridge and its namespaces or VMs",
        "reset" => "it changes the guests' links and tables, and recreates a guest that is gone",
        "down" => "it removes the lab's bridge, links and namespaces or VMs",
        "show" => {
            "it only reads, but a guest's state is read inside its namespace, or over SSH \
             with the lab's key, which only root may read"
        }
        "check" => {
            "it changes nothing, but it reads and pings inside the guests' namespaces, or \
             over SSH with the lab's key, which only root may read"
        }
        "capture" => {
            "it captures on the host end of the guest's link (a raw socket) and pings from \
             inside the guest"
        }
        "exec" => "it runs the command inside the guest's namespace or VM",
        "image build" => "it builds the image with debootstrap, which needs root",
        "hosts check" | "hosts prepare" | "plan" => {
            "it reaches the class's hosts through libvirt and SSH with root's keys"
        }
        _ => "it works on the host's network and the lab's guests",
    }
}

fn require_root(command: &'static str) -> Result<()> {
    if !is_root() {
        return Err(HostError::NotRoot(command).into());
    }
    Ok(())
}

fn require_programs(kind: DriverKind) -> Result<()> {
    let needed: &[(&'static str, &'static str)] = match kind {
        DriverKind::Netns => &process::PROGRAMS,
        DriverKind::Libvirt => &[
            ("qemu-img", "qemu-utils"),
            ("mkfs.vfat", "dosfstools"),
            ("mcopy", "mtools"),
            ("ssh-keygen", "openssh-client"),
        ],
    };
    for (program, package) in needed {
        if process::find_program(program).is_none() {
            return Err(HostError::MissingProgram(program, package).into());
        }
    }
    Ok(())
}

/// Where a lab runs: the host of a class its state records (a running lab never moves),
/// else `placed` (where placement put a new copy), else this machine (`None`).
fn where_runs(lab: &Lab, placed: Option<&HostSpec>) -> Option<HostSpec> {
    hosts::recorded_host(&StateDir::from_env(), &lab.name).or_else(|| placed.cloned())
}

/// The lab's driver; `image` is given when guests are to be created.
fn driver(lab: &Lab, netlink: &Arc<Netlink>, image: Option<Image>) -> Result<Box<dyn Driver>> {
    driver_on(lab, netlink, image, where_runs(lab, None).as_ref())
}

/// The lab's driver for guests on `host` (`None`: this machine).
fn driver_on(
    lab: &Lab,
    netlink: &Arc<Netlink>,
    image: Option<Image>,
    host: Option<&HostSpec>,
) -> Result<Box<dyn Driver>> {
    let dir = StateDir::from_env().lab_dir(&lab.name);
    let say = Box::new(|line: &str| eprintln!("{line}"));
    Ok(match (lab.driver, host) {
        (DriverKind::Netns, None) => Box::new(NetnsDriver::new(netlink.clone())),
        (DriverKind::Netns, Some(h)) => bail!(
            "lab {} runs on namespaces, which stay on this machine; host {} runs libvirt guests \
             only",
            lab.name,
            h.name
        ),
        (DriverKind::Libvirt, None) => Box::new(LibvirtDriver::open(lab, &dir, image, say)?),
        (DriverKind::Libvirt, Some(h)) => Box::new(LibvirtDriver::on_host(
            lab,
            &dir,
            image,
            remote::link(h)?,
            say,
        )),
    })
}

fn engine(lab: &Lab, image: Option<Image>) -> Result<Engine> {
    engine_on(lab, image, where_runs(lab, None))
}

/// The engine of a lab on `host` (`None`: this machine): that host's libvirt, bridge and
/// captures, recorded in the lab's state.
fn engine_on(lab: &Lab, image: Option<Image>, host: Option<HostSpec>) -> Result<Engine> {
    let netlink = Arc::new(Netlink::open()?);
    let host_side: Arc<dyn Host> = match &host {
        None => Arc::new(LocalHost::new(netlink.clone())),
        Some(h) => Arc::new(RemoteHost::new(remote::link(h)?, &lab.name)),
    };
    Ok(Engine::new(
        driver_on(lab, &netlink, image, host.as_ref())?,
        host_side,
        StateDir::from_env(),
    )
    .placed_on(host))
}

/// The iproute2 build recipe of a lab that names a source; its tarball must be readable.
fn recipe(lab: &Lab, path: &Path) -> Result<Option<Recipe>> {
    let tarball = lab.tarball(path)?;
    Ok(lab
        .iproute2
        .source
        .as_ref()
        .map(|s| Recipe::new(s, tarball.as_deref(), lab.iproute2.cflags.as_deref()))
        .transpose()?)
}

/// `vxlab validate LAB`
pub fn validate(path: &Path) -> Result<u8> {
    let lab = load(path)?;
    lab.tarball(path)?;
    println!(
        "{}: lab {} is valid ({}, {}, {} driver)",
        path.display(),
        lab.name,
        plural(lab.guests.len(), "guest", "guests"),
        plural(lab.vxlans.len(), "vxlan", "vxlans"),
        lab.driver
    );
    Ok(exit::OK)
}

/// `vxlab plan LAB`
pub fn plan(path: &Path, json: bool) -> Result<u8> {
    let p = plan::plan(&file_or_running(path)?);
    if json {
        // The host side beside the guests' commands, so the JSON rebuilds the lab too.
        let mut v = serde_json::to_value(&p)?;
        v["host"] = serde_json::to_value(crate::host_side::host_side(&p))?;
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", p.render());
    }
    Ok(exit::OK)
}

/// The lab in file `arg`, or the running lab named `arg` (as it was brought up).
fn file_or_running(arg: &Path) -> Result<Lab> {
    if names_a_file(arg) {
        return load(arg);
    }
    resolve(Some(arg)).map(|(lab, _)| lab).with_context(|| {
        format!(
            "{} is neither a lab file nor a running lab's name",
            arg.display()
        )
    })
}

fn print_outcome(plan: &Plan, o: &Outcome, json: bool) -> Result<u8> {
    let r = report::build(plan, o);
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", r.human());
    }
    Ok(if o.verdict.ok() {
        exit::OK
    } else {
        exit::CHECK_FAILED
    })
}

/// `vxlab up LAB [--timings]`: a lab file, or the name of a running lab (converged to its
/// recorded file).
pub fn up(arg: &Path, json: bool, timings: bool) -> Result<u8> {
    let (lab, source, text) = if names_a_file(arg) {
        let (lab, text) = load_with_text(arg)?;
        (lab, arg.to_path_buf(), text)
    } else {
        let (lab, copy) = resolve(Some(arg)).with_context(|| {
            format!(
                "{} is neither a lab file nor a running lab's name",
                arg.display()
            )
        })?;
        // The lab as recorded, from the file it was first brought up from.
        let (_, text) = load_recorded(&copy)?;
        let source = StateDir::from_env().read(&lab.name)?.source;
        (lab, source, text)
    };
    let ui = if timings {
        Progress::new().with_timings()
    } else {
        Progress::new()
    };
    let (p, o) = up_one(&lab, &source, &text, &ui, None)?;
    if let (Some(table), Some(s)) = (ui.timings_table(), ui.elapsed()) {
        eprint!("{table}");
        eprintln!("{s:.1} s: lab {} up and checked", lab.name);
    }
    print_outcome(&p, &o, json)
}

/// `vxlab reset LAB [GUEST]`
pub fn reset(arg: &Path, guest: Option<&str>, json: bool) -> Result<u8> {
    require_root("reset")?;
    crate::interrupt::install();
    let (lab, _) = resolve(Some(arg)).map_err(|e| name_copies(e, Some(arg), "reset", None))?;
    let p = plan::plan(&lab);
    let o = engine(&lab, image_for(&lab)?)?
        .reset(&p, guest, &Progress::new())
        .map_err(|e| up_failed(e, &lab.name))
        .with_context(|| match guest {
            Some(g) => format!("while resetting {g} in lab {}", lab.name),
            None => format!("while resetting lab {}", lab.name),
        })?;
    let code = print_outcome(&p, &o, json)?;
    if !json {
        if !o.made_anew.is_empty() {
            print!("\n{}", crate::views::remade_lines(&p, &o.made_anew));
        }
        print!("\n{}", crate::views::reset_reads(&p, guest));
    }
    Ok(code)
}

/// The image a lab's guests are created from (libvirt), or none.
fn image_for(lab: &Lab) -> Result<Option<Image>> {
    Ok(match lab.driver {
        DriverKind::Libvirt => Some(image::resolve(&lab.libvirt.image)?),
        DriverKind::Netns => None,
    })
}

/// A running lab, its plan, and the index of its guest named `guest`.
fn running_guest(lab: Option<&Path>, guest: &str) -> Result<(Lab, Plan, usize)> {
    // `vxlab exec LAB GUEST …` is a natural slip: say how the lab is named.
    if lab.is_none() && StateDir::from_env().labs().iter().any(|l| l == guest) {
        return Err(Usage(format!(
            "{guest} is a running lab, not a guest: name the lab with `--lab {guest}` before \
             the guest"
        ))
        .into());
    }
    let (lab, _) = resolve(lab)?;
    let p = plan::plan(&lab);
    let i = p
        .guests
        .iter()
        .position(|g| g.name == guest)
        .ok_or_else(|| EngineError::NoSuchGuest {
            lab: lab.name.clone(),
            guest: guest.to_string(),
        })?;
    Ok((lab, p, i))
}

/// Brings `lab` (read from `path`) up and checks it; a new lab on `placed` (see
/// [`where_runs`]).
fn up_one(
    lab: &Lab,
    path: &Path,
    text: &str,
    ui: &Progress,
    placed: Option<&HostSpec>,
) -> Result<(Plan, Outcome)> {
    require_root("up")?;
    crate::interrupt::install();
    require_programs(lab.driver)?;
    let image = image_for(lab)?;
    let recipe = recipe(lab, path)?;
    let p = plan::plan(lab);
    let o = engine_on(lab, image, where_runs(lab, placed))?
        .with_recipe(recipe)
        .up(&p, path, text, ui)
        .map_err(|e| up_failed(e, &lab.name))?;
    Ok((p, o))
}

/// Which copies `up` makes, and where.
#[derive(Debug, Clone, Copy)]
pub struct Copies<'a> {
    /// One copy by name (`--instance`).
    pub instance: Option<&'a str>,
    /// Copies 1 to N (`--count`).
    pub count: Option<u32>,
    /// Where their underlays come from (`--pool`).
    pub pool: Option<ipnet::IpNet>,
    /// The hosts' inventory (`--hosts`).
    pub hosts: Option<&'a Path>,
}

/// `vxlab up LAB --instance NAME` or `--count N`: copies of the lab side by side, their
/// underlays from `pool` (or the lab file's, or the default pool).
pub fn up_instances(path: &Path, copies: Copies<'_>, json: bool, timings: bool) -> Result<u8> {
    let Copies {
        instance,
        count,
        pool,
        hosts: hosts_file,
    } = copies;
    if let Some(name) = instance.filter(|n| !instance::valid_name(n)) {
        return Err(Usage(format!(
            "--instance `{name}` is not an instance name: use 1 to {} lowercase letters and \
             digits; nothing was created",
            instance::MAX_INSTANCE_NAME
        ))
        .into());
    }
    let (base, text) = load_with_text(path)?;
    // A bad inventory is refused before anything else.
    let inventory = hosts::inventory_path(hosts_file)
        .map(|f| hosts::load(&f))
        .transpose()?;
    if inventory.is_some() && base.driver != DriverKind::Libvirt {
        bail!(
            "lab {} runs on namespaces, which stay on this machine: --hosts (or VXLAB_HOSTS) \
             places libvirt labs only",
            base.name
        );
    }
    let state = StateDir::from_env();
    // Held until the copies are up, so a second `up --count` cannot pick the same subnets.
    let _pool_lock = workshop::lock()?;
    let running = workshop::running(&state, &base.name);
    let wanted: Vec<(String, u8)> = match (instance, count) {
        (Some(name), _) => {
            let index = match running.iter().find(|i| i.name == name) {
                Some(i) => i.index,
                None => instance::index_of(name)
                    .filter(|n| running.iter().all(|i| i.index != *n))
                    .or_else(|| (1..=255).find(|n| running.iter().all(|i| i.index != *n)))
                    .context("all 255 instance numbers are taken; nothing was created")?,
            };
            vec![(name.to_string(), index)]
        }
        (None, Some(n)) if (1..=255).contains(&n) => {
            (1..=n as u8).map(|i| (i.to_string(), i)).collect()
        }
        _ => bail!("--count takes 1 to 255"),
    };
    let pool = workshop::Pool::choose(pool, &base)?;
    // Copies that run keep their underlays: a pool named now places only new ones.
    if pool.from == workshop::PoolFrom::Flag {
        for i in running
            .iter()
            .filter(|i| wanted.iter().any(|(n, _)| *n == i.name))
        {
            if let Some(u) = i.underlay.filter(|u| !pool.net.contains(u)) {
                eprintln!(
                    "note: {}-{} runs already on {u}, outside --pool {}, and stays there; the \
                     pool places new copies (`vxlab down {} --all` first moves them all)",
                    base.name, i.name, pool.net, base.name
                );
            }
        }
    }
    let v6 = pool.net.addr().is_ipv6();
    let mut used = workshop::in_use(&LocalHost::new(Arc::new(Netlink::open()?)), &state, v6);
    // A copy's underlay must be free on whichever host it lands: every host's routes count.
    if let Some(inv) = &inventory {
        for link in hosts::connect_all(inv)? {
            let theirs = RemoteHost::new(link, &base.name).routes(v6);
            used.routes
                .extend(theirs.into_iter().filter(|r| r.dst.prefix_len() > 0));
        }
    }
    let labs = workshop::copies(&base, &wanted, pool, &used, &running).map_err(|e| match e {
        workshop::CopyError::Instance(why) => anyhow::Error::new(LabError {
            file: path.to_path_buf(),
            problems: vec![lab::Problem {
                position: lab::Position { line: 1, column: 1 },
                field: "name".into(),
                message: why,
            }],
        }),
        workshop::CopyError::Pool(p) => anyhow::Error::new(p).context(format!(
            "no copy of lab {} was brought up; nothing was created",
            base.name
        )),
    })?;
    // Where each copy runs, every host reached and the class known to fit before anything
    // is created.
    let (placed, facts) = match &inventory {
        Some(inv) => {
            require_root("up")?;
            let image = image_for(&base)?.context("a libvirt lab has an image")?;
            let names: Vec<String> = labs.iter().map(|l| l.name.clone()).collect();
            let (placed, facts) = hosts::place_copies(&base, &image, &names, inv)?;
            eprint!("{}", hosts::placement_table(&names, &placed));
            (placed, facts)
        }
        None => (vec![None; labs.len()], Vec::new()),
    };
    let single = labs.len() == 1;
    let ui = if single {
        Progress::new()
    } else {
        Progress::hidden()
    }
    .naming_labs();
    let ui = if timings { ui.with_timings() } else { ui };
    // A few labs at a time: each one's guests are already brought up in parallel. VMs: as
    // many as the host's free cores boot well, once the whole class is known to fit.
    let (width, queue) = match base.driver {
        _ if inventory.is_some() => (1, None),
        DriverKind::Libvirt if !single => {
            // Copies already running hold their memory: only new ones must fit in what the
            // host has free (an `up` again repairs a full class).
            let running = StateDir::from_env().labs();
            let new = labs.iter().filter(|l| !running.contains(&l.name)).count();
            let (class, summary) = capacity::plan_for(&base, new)?;
            if new < labs.len() {
                eprintln!("{} copies already run; {summary}", labs.len() - new);
            } else {
                eprintln!("{summary}");
            }
            let names = labs.iter().map(|l| l.name.clone()).collect();
            (class.width, Some(capacity::ClassQueue::new(names)))
        }
        _ => (4, None),
    };
    let results = if inventory.is_some() {
        up_on_hosts(&labs, &placed, &facts, |i| {
            up_one(&labs[i], path, &text, &ui, placed[i].as_ref())
        })
    } else {
        crate::parallel::parallel_map(&labs, width, |lab| {
            queue
                .as_ref()
                .inspect(|q| eprintln!("{}", q.started(&lab.name)));
            let r = up_one(lab, path, &text, &ui, None);
            queue
                .as_ref()
                .inspect(|q| eprintln!("{}", q.finished(&lab.name, capacity::Finish::of(&r))));
            r
        })
    };
    let mut reports = Vec::new();
    let mut all_ok = true;
    let mut first_err = None;
    let mut failed = 0;
    for (lab, r) in labs.iter().zip(results) {
        match r {
            Ok((p, o)) => {
                all_ok &= o.verdict.ok();
                if single && !json {
                    print!("{}", report::build(&p, &o).human());
                } else if !json {
                    println!(
                        "{:<24} underlay {:<18} bridge {:<15} {}",
                        lab.name,
                        lab.underlay.subnet,
                        lab.underlay.bridge,
                        if o.verdict.ok() {
                            format!("all {} checks passed", o.verdict.passed)
                        } else {
                            format!("{} checks FAILED", o.verdict.failures.len())
                        }
                    );
                }
                reports.push(serde_json::to_value(report::build(&p, &o))?);
            }
            // One copy's error is the command's error, said once by main; of many, each is
            // said here and the command fails naming how many.
            Err(e) if single => first_err = Some(e),
            Err(e) => {
                eprintln!("{}: {e:#}", lab.name);
                all_ok = false;
                failed += 1;
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    if let (Some(table), Some(s)) = (ui.timings_table(), ui.elapsed()) {
        eprint!("{table}");
        let up = labs.len() - failed - usize::from(first_err.is_some());
        eprintln!(
            "{s:.1} s: {} of lab {} up and checked",
            plural(up, "copy", "copies"),
            base.name
        );
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    if failed > 0 {
        bail!(
            "{failed} of {} copies of lab {} failed to come up (each said above)",
            labs.len(),
            base.name
        );
    }
    Ok(if all_ok { exit::OK } else { exit::CHECK_FAILED })
}

/// Runs `up` (given a copy's index) for every copy: all hosts at once, each on its own
/// connections, each host as many copies at a time as its free cores boot well. One host's
/// failures stay its copies'.
fn up_on_hosts(
    labs: &[Lab],
    placed: &[Option<HostSpec>],
    facts: &[crate::hosts::survey::HostFacts],
    up: impl Fn(usize) -> Result<(Plan, Outcome)> + Sync,
) -> Vec<Result<(Plan, Outcome)>> {
    let mut groups: std::collections::BTreeMap<Option<String>, Vec<usize>> = Default::default();
    for (i, h) in placed.iter().enumerate() {
        groups
            .entry(h.as_ref().map(|h| h.name.clone()))
            .or_default()
            .push(i);
    }
    let mut slots: Vec<Option<Result<(Plan, Outcome)>>> = (0..labs.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let up = &up;
        let handles: Vec<_> = groups
            .iter()
            .map(|(host, copies)| {
                let width = host.as_ref().map_or(1, |h| hosts::width(facts, h));
                let names = copies.iter().map(|&i| labs[i].name.clone()).collect();
                let queue =
                    capacity::ClassQueue::new(names).on(host.as_deref().unwrap_or("this machine"));
                s.spawn(move || {
                    let done = crate::parallel::parallel_map(copies, width, |&i| {
                        eprintln!("{}", queue.started(&labs[i].name));
                        let r = up(i);
                        eprintln!(
                            "{}",
                            queue.finished(&labs[i].name, capacity::Finish::of(&r))
                        );
                        r
                    });
                    copies.iter().copied().zip(done).collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (i, r) in h.join().expect("a host's thread panicked") {
                slots[i] = Some(r);
            }
        }
    });
    slots
        .into_iter()
        .map(|r| r.expect("every copy was brought up"))
        .collect()
}

/// `vxlab plan LAB --count N --hosts FILE`: where each copy would run, every host reached
/// and surveyed, nothing created.
pub fn plan_placement(path: &Path, count: u32, hosts_file: Option<&Path>) -> Result<u8> {
    let base = load(path)?;
    let file = hosts::inventory_path(hosts_file).ok_or_else(|| {
        Usage("plan --count places copies on hosts: name the host inventory with --hosts FILE, or set VXLAB_HOSTS".into())
    })?;
    let inv = hosts::load(&file)?;
    if !(1..=255).contains(&count) {
        bail!("--count takes 1 to 255");
    }
    require_root("plan")?;
    let image = image_for(&base)?.context("--hosts places libvirt labs only")?;
    let names: Vec<String> = (1..=count).map(|i| format!("{}-{i}", base.name)).collect();
    let (placed, _) = hosts::place_copies(&base, &image, &names, &inv)?;
    print!("{}", hosts::placement_table(&names, &placed));
    Ok(exit::OK)
}

/// `vxlab down [LAB] [--instance NAME | --all]`
pub fn down_instances(arg: Option<&Path>, instance: Option<&str>, all: bool) -> Result<u8> {
    crate::interrupt::finish_first();
    if instance.is_none() && !all {
        return down(arg);
    }
    let base = match arg {
        Some(p) if p.is_file() => load(p)?.name,
        Some(p) => p.to_string_lossy().into_owned(),
        None => {
            return Err(Usage(
                "name the lab whose copies to remove: `vxlab down LAB --all` or `vxlab down \
                 LAB --instance NAME`"
                    .into(),
            )
            .into())
        }
    };
    let names: Vec<String> = match instance {
        Some(i) => vec![format!("{base}-{i}")],
        None => workshop::running(&StateDir::from_env(), &base)
            .into_iter()
            .map(|i| format!("{base}-{}", i.name))
            .collect(),
    };
    if names.is_empty() {
        eprintln!("no instance of {base} is running; nothing to remove");
    }
    let results = crate::parallel::parallel_map(&names, 4, |n| down(Some(Path::new(n))));
    for r in results {
        r?;
    }
    Ok(exit::OK)
}

/// An `up` (or `reset`) that failed, said as it is: refused before anything was created,
/// stopped by Ctrl-C, or left part-way for `down` to remove.
fn up_failed(e: EngineError, lab: &str) -> anyhow::Error {
    let what = if e.before_anything() {
        format!("lab {lab} was left as it was: nothing was created or changed")
    } else if matches!(e, EngineError::Interrupted) {
        format!(
            "lab {lab} is left part-way; `vxlab down {lab}` removes it, `vxlab up {lab}` \
             finishes it"
        )
    } else {
        format!("while bringing up lab {lab}: it is left part-way; `vxlab down {lab}` removes all of it")
    };
    anyhow::Error::new(e).context(what)
}

/// Whether a LAB argument names a file rather than a running lab: it has a `/` or a `.`,
/// which no lab name has; or, a bare word that names no running lab, something other than a
/// directory is there (a FIFO or a device too, which loading then refuses with 65). A lab's
/// name wins over a directory of that name where vxlab is run (`./NAME` names the path).
fn names_a_file(arg: &Path) -> bool {
    let text = arg.to_string_lossy();
    if text.contains(['/', '.']) {
        return true;
    }
    let running = StateDir::from_env().lab_dir(&text).join(LAB_COPY).is_file();
    // A directory is never a lab file: a bare word naming one names a lab.
    let found = std::fs::symlink_metadata(arg).is_ok_and(|m| !m.is_dir());
    !running && found
}

/// The running lab that `arg` names (a lab file or a lab name), or the only one running.
fn resolve(arg: Option<&Path>) -> Result<(Lab, PathBuf)> {
    let state = StateDir::from_env();
    let mut given = None;
    let name = match arg {
        Some(p) if names_a_file(p) => {
            let lab = load(p)?;
            let name = lab.name.clone();
            given = Some((p, lab));
            name
        }
        Some(p) => p.to_string_lossy().into_owned(),
        None => match state.labs().as_slice() {
            [one] => one.clone(),
            [] => return Err(NotFound("no lab is running".into()).into()),
            many => {
                return Err(Usage(format!(
                    "several labs are running ({}); name one",
                    many.join(", ")
                ))
                .into())
            }
        },
    };
    let copy = state.lab_dir(&name).join(LAB_COPY);
    if !copy.is_file() {
        return Err(StateError::NotRunning(name, state.root().to_path_buf()).into());
    }
    let (lab, _) =
        load_recorded(&copy).with_context(|| format!("lab {name}'s recorded lab file"))?;
    // A file edited since `up` names the running lab, which is as it was brought up: say so,
    // rather than check (or show, or down) something other than the file silently.
    if let Some((path, _)) = given.filter(|(_, g)| plan::plan(g) != plan::plan(&lab)) {
        eprintln!(
            "note: {} was changed since lab {name} was brought up from it; this works on the \
             running lab as it was brought up (`vxlab up {}` brings the lab to the file)",
            path.display(),
            path.display(),
        );
    }
    // An instance is derived again from the lab file, as `up` derived it.
    let lab = match state.read(&name).ok().and_then(|st| st.instance) {
        Some(i) => {
            instance::derive(&lab, &i.name, i.index, i.underlay).map_err(anyhow::Error::msg)?
        }
        None => lab,
    };
    Ok((lab, copy))
}

/// `vxlab check [LAB] [--all]`: one lab, or with `all` every running copy of it.
pub fn check(arg: Option<&Path>, json: bool, all: bool) -> Result<u8> {
    require_root("check")?;
    if all {
        return check_copies(arg, json);
    }
    let (lab, _) = match resolve(arg) {
        Ok(found) => found,
        Err(e) => return Err(name_copies(e, arg, "check", Some("checks them all"))),
    };
    let p = plan::plan(&lab);
    let o = engine(&lab, None)?
        .check(&p)
        .with_context(|| format!("while checking lab {}", lab.name))?;
    let code = print_outcome(&p, &o, json)?;
    if !json {
        let copies = workshop::running(&StateDir::from_env(), &lab.name);
        if !copies.is_empty() {
            println!(
                "\n{} of lab {} also running, not checked here: {} (`vxlab check {} --all` \
                 checks them)",
                plural(copies.len(), "copy", "copies"),
                lab.name,
                copy_names(&lab.name, &copies),
                lab.name
            );
        }
    }
    Ok(code)
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The names of a lab's copies, listed or, for many, as a range.
fn copy_names(base: &str, copies: &[lab::instance::Instance]) -> String {
    let names: Vec<String> = copies
        .iter()
        .map(|i| format!("{base}-{}", i.name))
        .collect();
    match names.as_slice() {
        [first, .., last] if names.len() > 6 => format!("{first} .. {last}"),
        _ => names.join(", "),
    }
}

/// A lab that is not running whose copies are: the error names them, and how `vxlab
/// {command} LAB --all` (which `does` so) or one copy's name reaches them; else `e` as it is.
fn name_copies(
    e: anyhow::Error,
    arg: Option<&Path>,
    command: &str,
    all_does: Option<&str>,
) -> anyhow::Error {
    let Some(StateError::NotRunning(base, _)) = e.downcast_ref() else {
        return e;
    };
    let copies = workshop::running(&StateDir::from_env(), base);
    if copies.is_empty() {
        return e;
    }
    let arg = arg.map_or_else(|| base.clone(), |a| a.display().to_string());
    let all = all_does.map_or_else(String::new, |does| {
        format!("`vxlab {command} {arg} --all` {does}, ")
    });
    NotFound(format!(
        "lab {base} is not running, but {} of it {}: {}; {all}`vxlab {command} {base}-{}` one",
        plural(copies.len(), "copy", "copies"),
        if copies.len() == 1 { "is" } else { "are" },
        copy_names(base, &copies),
        copies[0].name
    ))
    .into()
}

/// `vxlab check LAB --all`: every running copy of the lab, one line each.
fn check_copies(arg: Option<&Path>, json: bool) -> Result<u8> {
    let base = match arg {
        Some(p) if p.is_file() => load(p)?.name,
        Some(p) => p.to_string_lossy().into_owned(),
        None => {
            return Err(
                Usage("name the lab whose copies to check: `vxlab check LAB --all`".into()).into(),
            )
        }
    };
    let copies = workshop::running(&StateDir::from_env(), &base);
    if copies.is_empty() {
        return Err(NotFound(format!("no copy of lab {base} is running")).into());
    }
    let names: Vec<String> = copies
        .iter()
        .map(|i| format!("{base}-{}", i.name))
        .collect();
    let results = crate::parallel::parallel_map(&names, 4, |name| -> Result<_> {
        let (lab, _) = resolve(Some(Path::new(name)))?;
        let p = plan::plan(&lab);
        let o = engine(&lab, None)?.check(&p)?;
        Ok((lab, p, o))
    });
    let mut all_ok = true;
    let mut reports = Vec::new();
    for (name, r) in names.iter().zip(results) {
        match r {
            Ok((lab, p, o)) => {
                all_ok &= o.verdict.ok();
                let r = report::build(&p, &o);
                if !json {
                    let first =
                        o.verdict.diagnoses.first().map(|d| {
                            format!(" (first cause: {}: {})", d.cause.place(), d.cause.what)
                        });
                    println!(
                        "{:<24} underlay {:<18} {}{}",
                        name,
                        lab.underlay.subnet,
                        if o.verdict.ok() {
                            format!("all {} checks passed", o.verdict.passed)
                        } else {
                            format!("{} checks FAILED", o.verdict.failures.len())
                        },
                        first.unwrap_or_default()
                    );
                }
                reports.push(serde_json::to_value(r)?);
            }
            Err(e) => {
                all_ok = false;
                if !json {
                    println!("{name:<24} cannot check: {e:#}");
                }
                reports.push(serde_json::json!({"lab": name, "error": format!("{e:#}")}));
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(if all_ok { exit::OK } else { exit::CHECK_FAILED })
}

/// `vxlab down [LAB]`
pub fn down(arg: Option<&Path>) -> Result<u8> {
    require_root("down")?;
    let lab = match resolve(arg) {
        Ok((lab, _)) => lab,
        // `vxlab down` again after it removed the only lab: nothing to do, as for a name.
        Err(e) if arg.is_none() && e.is::<NotFound>() => {
            eprintln!("{e}; nothing to remove");
            return Ok(exit::OK);
        }
        Err(e) if matches!(e.downcast_ref(), Some(StateError::NotRunning(..))) => {
            // A vxlab killed right after it took the lab's lock leaves only the lock.
            // Named by its lab file or by its name.
            let name = arg.and_then(|a| match names_a_file(a) {
                true => load(a).ok().map(|l| l.name),
                false => Some(a.to_string_lossy().into_owned()),
            });
            let state = StateDir::from_env();
            if let Some(name) = name.filter(|n| state.leftovers().contains(n)) {
                state.remove_leftover(&name)?;
                eprintln!(
                    "lab {name} had no state left, only files of a vxlab stopped part-way \
                     (nothing of it runs); removed"
                );
                return Ok(exit::OK);
            }
            let e = name_copies(e, arg, "down", Some("removes them all"));
            if e.is::<NotFound>() {
                return Err(e.context("nothing was removed"));
            }
            eprintln!("{e}; nothing to remove");
            return Ok(exit::OK);
        }
        Err(e) => return Err(e),
    };
    let notes = engine(&lab, None)?
        .down(&lab.name)
        .with_context(|| format!("while removing lab {}", lab.name))?;
    for n in notes {
        eprintln!("note: {n}");
    }
    eprintln!("lab {} removed", lab.name);
    Ok(exit::OK)
}

/// `vxlab image build [NAME]`
pub fn image_build(name: &str) -> Result<u8> {
    require_root("image build")?;
    let image = image::build(name, &|line| eprintln!("{line}"))?;
    println!("image {name} ready: {}", image.disk.display());
    Ok(exit::OK)
}

/// `vxlab image list`
pub fn image_list() -> Result<u8> {
    let images = image::list();
    if images.is_empty() {
        println!(
            "no images in {}; `vxlab image build` makes one",
            image::cache_dir().display()
        );
    }
    for (name, size) in images {
        println!("{name:<20} {:>6} MiB", size / (1 << 20));
    }
    Ok(exit::OK)
}

fn libvirt_guest(lab: Option<&Path>, guest: &str) -> Result<(Lab, plan::GuestPlan)> {
    let (lab, _) = resolve(lab)?;
    if lab.driver != DriverKind::Libvirt {
        bail!(
            "lab {} runs on namespaces; use `vxlab shell {guest}`",
            lab.name
        );
    }
    let g = plan::plan(&lab).guest(guest).cloned();
    let g = g.ok_or_else(|| EngineError::NoSuchGuest {
        lab: lab.name.clone(),
        guest: guest.to_string(),
    })?;
    Ok((lab, g))
}

/// `vxlab ssh GUEST`: an interactive shell, with the host key checked against the one vxlab
/// gave the guest.
pub fn ssh(lab: Option<&Path>, guest: &str) -> Result<u8> {
    let (lab, g) = libvirt_guest(lab, guest)?;
    let dir = StateDir::from_env().lab_dir(&lab.name);
    let host_pub = std::fs::read_to_string(
        dir.join("guests")
            .join(guest)
            .join("ssh_host_ed25519_key.pub"),
    )?;
    let known = dir.join("known_hosts");
    crate::host::files::write_replacing(
        &known,
        format!("{} {}\n", g.underlay.addr(), host_pub.trim()).as_bytes(),
        crate::host::files::PRIVATE,
    )?;
    let mut ssh = std::process::Command::new("ssh");
    // A guest on a host of a class is reached through that host's sshd.
    if let Some(h) = where_runs(&lab, None) {
        ssh.arg("-o").arg(proxy_command(&h)?);
    }
    let status = ssh
        .arg("-i")
        .arg(dir.join("id_ed25519"))
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known.display()))
        .args(["-o", "StrictHostKeyChecking=yes", "-l", "root"])
        .arg(g.underlay.addr().to_string())
        .status()?;
    Ok(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1))
}

/// ssh's `ProxyCommand` option through host `h`'s sshd (ssh runs it with a shell: every
/// value in it was validated when the inventory was read, and is quoted here too).
fn proxy_command(h: &HostSpec) -> Result<String> {
    let login = h.login().map_err(anyhow::Error::msg)?;
    let mut words = vec!["ssh".to_string(), "-p".into(), login.port.to_string()];
    if let Some(k) = &login.keyfile {
        words.extend(["-i".into(), k.to_string_lossy().into_owned()]);
    }
    if login.no_verify {
        words.extend(["-o".into(), "StrictHostKeyChecking=no".into()]);
    }
    if let Some(k) = &login.known_hosts {
        words.extend(["-o".into(), format!("UserKnownHostsFile={}", k.display())]);
    }
    words.extend([
        "-W".into(),
        "%h:%p".into(),
        format!("{}@{}", login.user, login.host),
    ]);
    Ok(format!("ProxyCommand={}", plan::shell_words(&words)))
}

/// `vxlab console GUEST`: the guest's serial console through libvirt's console stream, over
/// the connection to the host the lab runs on.
pub fn console(lab: Option<&Path>, guest: &str) -> Result<u8> {
    use crate::driver::libvirt::console::{self, Ended};
    require_root("console")?;
    let (lab, g) = libvirt_guest(lab, guest)?;
    virt::error::clear_error_callback();
    let placed = where_runs(&lab, None);
    let link = placed.as_ref().map(remote::link).transpose()?;
    let local;
    let conn = match &link {
        Some(l) => l.conn(),
        None => {
            local = virt::connect::Connect::open(Some(&lab.libvirt.uri))
                .with_context(|| format!("cannot connect to libvirt at {}", lab.libvirt.uri))?;
            &local
        }
    };
    let on = placed.map_or_else(String::new, |h| format!(" on host {}", h.name));
    println!(
        "connected to {guest}'s serial console (domain {}{on}); Ctrl-] leaves",
        g.instance
    );
    // Unbuffered: `poll` sees every key that is waiting.
    let mut input = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let ended = {
        let _raw = crate::commands::shell::RawMode::enter();
        console::attach(conn, &g.instance, &mut input, std::io::stdout())
    }
    .with_context(|| format!("while attached to {guest}'s console in lab {}", lab.name))?;
    Ok(match ended {
        Ended::Left => exit::OK,
        Ended::Closed => {
            println!("\nthe console closed: {guest} stopped, or another session took it");
            exit::UNAVAILABLE
        }
    })
}
