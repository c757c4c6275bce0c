//! One function per `vxlab` subcommand: resolve the lab, pick the driver, call the engine, print.
//! Errors get context here, from the outermost operation down.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::builder::Recipe;
use crate::driver::libvirt::image::{self, Image, ImageError};
use crate::driver::libvirt::{capacity, LibvirtDriver, OpenError};
use crate::driver::netns::NetnsDriver;
use crate::driver::Driver;
use crate::engine::{Engine, EngineError, Outcome};
use crate::host::netlink::Netlink;
use crate::host::process;
use crate::lab::{self, instance, DriverKind, Lab, LabError, LoadError};
use crate::plan::{self, Plan};
use crate::progress::Progress;
use crate::report;
use crate::state::{StateDir, StateError, LAB_COPY};

mod teach;

pub use teach::{capture, graph, show, walk, CaptureOptions};

/// Exit statuses, after sysexits where one fits.
pub mod exit {
    /// Everything held.
    pub const OK: u8 = 0;
    /// The lab runs but a check failed.
    pub const CHECK_FAILED: u8 = 1;
    /// The lab file is invalid.
    pub const DATA: u8 = 65;
    /// A program or service vxlab needs is missing.
    pub const UNAVAILABLE: u8 = 69;
    /// Any other failure.
    pub const SOFTWARE: u8 = 70;
    /// Another vxlab holds the lab; try again later.
    pub const TEMPFAIL: u8 = 75;
    /// vxlab must run as root.
    pub const NOPERM: u8 = 77;
}

/// A precondition on the host that is not met.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Not root.
    #[error("vxlab {0} needs root: it creates bridges, namespaces and guests (try sudo)")]
    NotRoot(&'static str),
    /// A program is missing.
    #[error("`{0}` is not installed; install the Debian package {1}")]
    MissingProgram(&'static str, &'static str),
}

/// The exit status for an error, by its kind anywhere in the chain.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<LabError>() {
            return exit::DATA;
        }
        let busy = matches!(cause.downcast_ref(), Some(StateError::Busy { .. }))
            || matches!(
                cause.downcast_ref(),
                Some(EngineError::State(StateError::Busy { .. }))
            );
        if busy {
            return exit::TEMPFAIL;
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
            None => {}
        }
    }
    exit::SOFTWARE
}

fn load(path: &Path) -> Result<Lab> {
    lab::load(path).map_err(|e| match e {
        LoadError::Invalid(invalid) => anyhow::Error::new(invalid),
        other => anyhow::Error::new(other),
    })
}

fn require_root(command: &'static str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
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

/// The lab's driver; `image` is given when guests are to be created.
fn driver(lab: &Lab, netlink: &Arc<Netlink>, image: Option<Image>) -> Result<Box<dyn Driver>> {
    Ok(match lab.driver {
        DriverKind::Netns => Box::new(NetnsDriver::new(netlink.clone())),
        DriverKind::Libvirt => Box::new(LibvirtDriver::open(
            lab,
            &StateDir::from_env().lab_dir(&lab.name),
            image,
            Box::new(|line| eprintln!("{line}")),
        )?),
    })
}

fn engine(lab: &Lab, image: Option<Image>) -> Result<Engine> {
    let netlink = Arc::new(Netlink::open()?);
    Ok(Engine::new(
        driver(lab, &netlink, image)?,
        netlink,
        StateDir::from_env(),
    ))
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
        "{}: lab {} is valid ({} guests, {} vxlans, {} driver)",
        path.display(),
        lab.name,
        lab.guests.len(),
        lab.vxlans.len(),
        lab.driver
    );
    Ok(exit::OK)
}

/// `vxlab plan LAB`
pub fn plan(path: &Path, json: bool) -> Result<u8> {
    let p = plan::plan(&load(path)?);
    if json {
        println!("{}", serde_json::to_string_pretty(&p)?);
    } else {
        print!("{}", p.render());
    }
    Ok(exit::OK)
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

/// `vxlab up LAB [--timings]`
pub fn up(path: &Path, json: bool, timings: bool) -> Result<u8> {
    let lab = load(path)?;
    let ui = if timings {
        Progress::new().with_timings()
    } else {
        Progress::new()
    };
    let (p, o) = up_one(&lab, path, &ui)?;
    if let (Some(table), Some(s)) = (ui.timings_table(), ui.elapsed()) {
        eprint!("{table}");
        eprintln!("{s:.1} s: lab {} up and checked", lab.name);
    }
    print_outcome(&p, &o, json)
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
    let (lab, _) = resolve(lab)?;
    let p = plan::plan(&lab);
    let i = p
        .guests
        .iter()
        .position(|g| g.name == guest)
        .with_context(|| format!("lab {} has no guest named {guest}", lab.name))?;
    Ok((lab, p, i))
}

/// Brings `lab` (read from `path`) up and checks it.
fn up_one(lab: &Lab, path: &Path, ui: &Progress) -> Result<(Plan, Outcome)> {
    require_root("up")?;
    require_programs(lab.driver)?;
    let text = std::fs::read_to_string(path)?;
    let image = image_for(lab)?;
    let recipe = recipe(lab, path)?;
    let p = plan::plan(lab);
    let o = engine(lab, image)?
        .with_recipe(recipe)
        .up(&p, path, &text, ui)
        .map_err(|e| down_hint(e, &lab.name))
        .with_context(|| format!("while bringing up lab {}", lab.name))?;
    Ok((p, o))
}

/// The running instances of lab `base`: name and index.
fn running_instances(base: &str) -> Vec<(String, u8)> {
    let state = StateDir::from_env();
    state
        .labs()
        .iter()
        .filter_map(|l| state.read(l).ok()?.instance)
        .filter(|i| i.base == base)
        .map(|i| (i.name, i.index))
        .collect()
}

/// `vxlab up LAB --instance NAME` or `--count N`: copies of the lab side by side.
pub fn up_instances(
    path: &Path,
    json: bool,
    instance: Option<&str>,
    count: Option<u32>,
) -> Result<u8> {
    let base = load(path)?;
    let wanted: Vec<(String, u8)> = match (instance, count) {
        (Some(name), _) => {
            let taken = running_instances(&base.name);
            let index = match taken.iter().find(|(n, _)| n == name) {
                Some((_, i)) => *i,
                None => instance::index_of(name)
                    .or_else(|| (1..=255).find(|i| taken.iter().all(|(_, t)| t != i)))
                    .context("all 255 instance numbers are taken")?,
            };
            vec![(name.to_string(), index)]
        }
        (None, Some(n)) if (1..=255).contains(&n) => {
            (1..=n as u8).map(|i| (i.to_string(), i)).collect()
        }
        _ => bail!("--count takes 1 to 255"),
    };
    let labs: Vec<Lab> = wanted
        .iter()
        .map(|(name, index)| {
            instance::derive(&base, name, *index).map_err(|why| {
                anyhow::Error::new(LabError {
                    file: path.to_path_buf(),
                    problems: vec![lab::Problem {
                        position: lab::Position { line: 1, column: 1 },
                        field: "name".into(),
                        message: why,
                    }],
                })
            })
        })
        .collect::<Result<_>>()?;
    let single = labs.len() == 1;
    let ui = if single {
        Progress::new()
    } else {
        Progress::hidden()
    };
    // A few labs at a time: each one's guests are already brought up in parallel. VMs: as
    // many as the host's free cores boot well, once the whole class is known to fit.
    let (width, queue) = match base.driver {
        DriverKind::Libvirt if !single => {
            let (class, summary) = capacity::plan_for(&base, labs.len())?;
            eprintln!("{summary}");
            let names = labs.iter().map(|l| l.name.clone()).collect();
            (class.width, Some(capacity::ClassQueue::new(names)))
        }
        _ => (4, None),
    };
    let results = crate::engine::parallel_map(&labs, width, |lab| {
        queue
            .as_ref()
            .inspect(|q| eprintln!("{}", q.started(&lab.name)));
        let r = up_one(lab, path, &ui);
        queue
            .as_ref()
            .inspect(|q| eprintln!("{}", q.finished(&lab.name, r.is_ok())));
        r
    });
    let mut reports = Vec::new();
    let mut all_ok = true;
    let mut first_err = None;
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
            Err(e) => {
                eprintln!("{}: {e:#}", lab.name);
                all_ok = false;
                first_err.get_or_insert(e);
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(if all_ok { exit::OK } else { exit::CHECK_FAILED })
}

/// `vxlab down [LAB] [--instance NAME | --all]`
pub fn down_instances(arg: Option<&Path>, instance: Option<&str>, all: bool) -> Result<u8> {
    if instance.is_none() && !all {
        return down(arg);
    }
    let base = match arg {
        Some(p) if p.is_file() => load(p)?.name,
        Some(p) => p.to_string_lossy().into_owned(),
        None => bail!("name the lab whose instances to remove"),
    };
    let names: Vec<String> = match instance {
        Some(i) => vec![format!("{base}-{i}")],
        None => running_instances(&base)
            .into_iter()
            .map(|(n, _)| format!("{base}-{n}"))
            .collect(),
    };
    if names.is_empty() {
        eprintln!("no instance of {base} is running; nothing to remove");
    }
    let results = crate::engine::parallel_map(&names, 4, |n| down(Some(Path::new(n))));
    for r in results {
        r?;
    }
    Ok(exit::OK)
}

fn down_hint(e: EngineError, lab: &str) -> anyhow::Error {
    match e {
        EngineError::State(StateError::Busy { .. }) => e.into(),
        other => anyhow::Error::new(other).context(format!(
            "the lab is left part-way; `vxlab down {lab}` removes all of it"
        )),
    }
}

/// The running lab that `arg` names (a lab file or a lab name), or the only one running.
fn resolve(arg: Option<&Path>) -> Result<(Lab, PathBuf)> {
    let state = StateDir::from_env();
    let name = match arg {
        Some(p) if p.is_file() => load(p)?.name,
        Some(p) => p.to_string_lossy().into_owned(),
        None => match state.labs().as_slice() {
            [one] => one.clone(),
            [] => bail!("no lab is running"),
            many => bail!("several labs are running ({}); name one", many.join(", ")),
        },
    };
    let copy = state.lab_dir(&name).join(LAB_COPY);
    if !copy.is_file() {
        return Err(StateError::NotRunning(name, state.root().to_path_buf()).into());
    }
    let lab = load(&copy).with_context(|| format!("lab {name}'s recorded lab file"))?;
    // An instance is derived again from the lab file, as `up` derived it.
    let lab = match state.read(&name).ok().and_then(|st| st.instance) {
        Some(i) => instance::derive(&lab, &i.name, i.index).map_err(anyhow::Error::msg)?,
        None => lab,
    };
    Ok((lab, copy))
}

/// `vxlab check [LAB]`
pub fn check(arg: Option<&Path>, json: bool) -> Result<u8> {
    require_root("check")?;
    let (lab, _) = resolve(arg)?;
    let p = plan::plan(&lab);
    let o = engine(&lab, None)?
        .check(&p)
        .with_context(|| format!("while checking lab {}", lab.name))?;
    print_outcome(&p, &o, json)
}

/// `vxlab down [LAB]`
pub fn down(arg: Option<&Path>) -> Result<u8> {
    require_root("down")?;
    let lab = match resolve(arg) {
        Ok((lab, _)) => lab,
        Err(e) if matches!(e.downcast_ref(), Some(StateError::NotRunning(..))) => {
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

/// `vxlab status`: running labs, workshop instances with the lab they copy, and health.
pub fn status(json: bool) -> Result<u8> {
    let state = StateDir::from_env();
    let mut rows = Vec::new();
    for name in state.labs() {
        let row = match resolve(Some(Path::new(&name))) {
            Err(e) => serde_json::json!({"lab": name, "health": format!("unreadable: {e}")}),
            Ok((lab, _)) => {
                let p = plan::plan(&lab);
                let health = match engine(&lab, None) {
                    Err(e) => format!("{e}"),
                    Ok(eng) => {
                        let bad: Vec<String> = eng
                            .health(&p)
                            .into_iter()
                            .filter_map(|(g, r)| r.err().map(|e| format!("{g}: {e}")))
                            .collect();
                        if bad.is_empty() {
                            "healthy".into()
                        } else {
                            bad.join("; ")
                        }
                    }
                };
                serde_json::json!({
                    "lab": name,
                    "instance_of": lab.instance.as_ref().map(|i| &i.base),
                    "instance": lab.instance.as_ref().map(|i| &i.name),
                    "driver": lab.driver.to_string(),
                    "guests": lab.guests.len(),
                    "bridge": lab.underlay.bridge,
                    "underlay": lab.underlay.subnet.to_string(),
                    "health": health,
                })
            }
        };
        rows.push(row);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        println!("no lab is running");
    } else {
        let text = |v: &serde_json::Value, k: &str| match &v[k] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "-".into(),
            other => other.to_string(),
        };
        println!(
            "{:<24} {:<16} {:<8} {:<8} {:>6}  {:<15} {:<18} HEALTH",
            "LAB", "INSTANCE OF", "INSTANCE", "DRIVER", "GUESTS", "BRIDGE", "UNDERLAY"
        );
        for r in &rows {
            println!(
                "{:<24} {:<16} {:<8} {:<8} {:>6}  {:<15} {:<18} {}",
                text(r, "lab"),
                text(r, "instance_of"),
                text(r, "instance"),
                text(r, "driver"),
                text(r, "guests"),
                text(r, "bridge"),
                text(r, "underlay"),
                text(r, "health")
            );
        }
    }
    Ok(exit::OK)
}

/// `vxlab exec GUEST -- CMD...`
pub fn exec(lab: Option<&Path>, guest: &str, argv: &[String]) -> Result<u8> {
    require_root("exec")?;
    let (lab, _) = resolve(lab)?;
    let p = plan::plan(&lab);
    let Some(g) = p.guest(guest) else {
        bail!("lab {} has no guest named {guest}", lab.name);
    };
    let out = driver(&lab, &Arc::new(Netlink::open()?), None)?.exec(g, argv)?;
    print!("{}", out.stdout);
    eprint!("{}", out.stderr);
    Ok(u8::try_from(out.status).unwrap_or(exit::SOFTWARE))
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
            "lab {} runs on namespaces; use `vxlab exec {guest} -- bash`",
            lab.name
        );
    }
    let g = plan::plan(&lab).guest(guest).cloned();
    let g = g.with_context(|| format!("lab {} has no guest named {guest}", lab.name))?;
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
    std::fs::write(
        &known,
        format!("{} {}\n", g.underlay.addr(), host_pub.trim()),
    )?;
    let status = std::process::Command::new("ssh")
        .arg("-i")
        .arg(dir.join("id_ed25519"))
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known.display()))
        .args(["-o", "StrictHostKeyChecking=yes", "-l", "root"])
        .arg(g.underlay.addr().to_string())
        .status()?;
    Ok(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1))
}

/// `vxlab console GUEST`: the guest's serial console through virsh.
pub fn console(lab: Option<&Path>, guest: &str) -> Result<u8> {
    let (lab, g) = libvirt_guest(lab, guest)?;
    let status = std::process::Command::new("virsh")
        .args(["-c", &lab.libvirt.uri, "console", &g.instance])
        .status()?;
    Ok(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1))
}
