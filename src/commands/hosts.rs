//! A class bigger than one host: `vxlab hosts check` and `vxlab hosts prepare`, and the
//! placement `up --count N --hosts FILE` and `plan --hosts FILE` make. Every host is reached
//! in parallel through its own connections (`driver::libvirt::remote`); nothing is created
//! on any host until every host answered and the whole class fits.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::exit;
use crate::driver::libvirt::checksums::Checksums;
use crate::driver::libvirt::image::{self, Image};
use crate::driver::libvirt::remote::{self, facts, storage, HostLink, HostUnreachable};
use crate::hosts::placement::{self, HostRoom};
use crate::hosts::survey::{self, HostFacts, ImageState};
use crate::hosts::{inventory, HostSpec, Inventory, HOSTS_ENV};
use crate::lab::Lab;
use crate::parallel::parallel_map;
use crate::state::StateDir;

/// The inventory `--hosts` names, else the one in `VXLAB_HOSTS`; none for a class on this
/// machine alone.
pub fn inventory_path(flag: Option<&Path>) -> Option<PathBuf> {
    flag.map(Path::to_path_buf).or_else(|| {
        std::env::var_os(HOSTS_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

/// Reads and validates the inventory; an invalid one is refused before any host is touched.
pub fn load(path: &Path) -> Result<Inventory> {
    inventory::load(path).map_err(|e| match e {
        inventory::LoadError::Invalid(invalid) => anyhow::Error::new(invalid),
        other => anyhow::Error::new(other),
    })
}

/// Hosts of the inventory that cannot be reached, each with why; nothing was created.
#[derive(Debug, thiserror::Error)]
pub struct Unreachable {
    /// The inventory.
    pub file: PathBuf,
    /// Hosts listed in it.
    pub of: usize,
    /// Those that cannot be reached.
    pub hosts: Vec<HostUnreachable>,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of the {} hosts in {} cannot be reached; nothing was created on any host",
            self.hosts.len(),
            self.of,
            self.file.display()
        )?;
        for h in &self.hosts {
            write!(f, "\n  {h}")?;
        }
        Ok(())
    }
}

/// Hosts that answer but cannot take copies (no image, `/dev/kvm` unusable, a program
/// missing); nothing was created.
#[derive(Debug, thiserror::Error)]
#[error("{} not ready for copies of {lab}; nothing was created on any host:\n{}", if .hosts.len() == 1 { "a host is" } else { "hosts are" }, .hosts.iter().map(|(h, why)| format!("  {h}: {why}")).collect::<Vec<_>>().join("\n"))]
pub struct NotReady {
    /// The lab.
    pub lab: String,
    /// Each host that is not ready, and why.
    pub hosts: Vec<(String, String)>,
}

/// Connects to every host of `inv` at once; every one that cannot be reached is named.
pub fn connect_all(inv: &Inventory) -> Result<Vec<Arc<HostLink>>, Unreachable> {
    let links = parallel_map(&inv.hosts, inv.hosts.len().max(1), |h| {
        remote::link(&h.spec)
    });
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for l in links {
        match l {
            Ok(l) => ok.push(l),
            Err(e) => failed.push(e),
        }
    }
    if failed.is_empty() {
        Ok(ok)
    } else {
        Err(Unreachable {
            file: inv.file.clone(),
            of: inv.hosts.len(),
            hosts: failed,
        })
    }
}

/// The host a copy named `name` was placed on, as its state records it.
pub fn recorded_host(state: &StateDir, name: &str) -> Option<HostSpec> {
    state.read(name).ok().and_then(|st| st.host)
}

/// Where each of `names` (copies of `base`) runs: a running copy stays where it is (this
/// machine or its host), each new one goes where [`placement::place`] puts it. Every host is
/// reached and surveyed first; a host that cannot be reached or is not ready, or a class
/// that does not fit, is refused before anything is created. Also returns each host's
/// survey, in inventory order.
pub fn place_copies(
    base: &Lab,
    image: &Image,
    names: &[String],
    inv: &Inventory,
) -> Result<(Vec<Option<HostSpec>>, Vec<HostFacts>)> {
    let state = StateDir::from_env();
    // The image on each host is compared by checksum, as `hosts check` does; each file is
    // hashed again only when it changed.
    let sums = local_sums(image)?;
    let links = connect_all(inv)?;
    let facts = survey_all(&links, Some((image, &sums)), Some(base));
    let blocked: Vec<(String, String)> = facts
        .iter()
        .filter_map(|h| h.blocker().map(|b| (h.name.clone(), b)))
        .collect();
    if !blocked.is_empty() {
        return Err(NotReady {
            lab: base.name.clone(),
            hosts: blocked,
        }
        .into());
    }
    // Every running copy of the lab counts toward its host's load.
    let on_host: Vec<Option<String>> = crate::workshop::running(&state, &base.name)
        .iter()
        .map(|i| recorded_host(&state, &format!("{}-{}", base.name, i.name)).map(|h| h.name))
        .collect();
    let rooms: Vec<HostRoom> = inv
        .hosts
        .iter()
        .zip(&facts)
        .map(|(h, f)| {
            let fit = f.reached.as_ref().ok().and_then(|r| r.fit);
            HostRoom {
                name: h.spec.name.clone(),
                fit: fit.map_or(0, |f| f.copies),
                served: fit.map_or(0, |f| f.served),
                running: on_host
                    .iter()
                    .filter(|n| n.as_deref() == Some(&h.spec.name))
                    .count(),
                weight: h.weight,
            }
        })
        .collect();
    // A running copy is where its state says (`None`: this machine); a new one is placed.
    let running: Vec<Option<Option<HostSpec>>> = names
        .iter()
        .map(|n| state.read(n).ok().map(|st| st.host))
        .collect();
    let new = running.iter().filter(|r| r.is_none()).count();
    let mut chosen = placement::place(new, &rooms)?.into_iter();
    let placed = running
        .into_iter()
        .map(|r| r.unwrap_or_else(|| chosen.next().map(|i| inv.hosts[i].spec.clone())))
        .collect();
    Ok((placed, facts))
}

/// Surveys every host at once; `image` with this machine's checksums of its files.
fn survey_all(
    links: &[Arc<HostLink>],
    image: Option<(&Image, &[String; 3])>,
    lab: Option<&Lab>,
) -> Vec<HostFacts> {
    parallel_map(links, links.len().max(1), |l| HostFacts {
        name: l.name().to_string(),
        uri: l.spec().uri.clone(),
        reached: facts::survey(l, image, lab),
    })
}

/// How many copies a host brings up at once, as its survey worked out for the lab.
pub fn width(facts: &[HostFacts], host: &str) -> usize {
    facts
        .iter()
        .find(|f| f.name == host)
        .and_then(|f| f.reached.as_ref().ok()?.fit)
        .map_or(1, |f| f.width)
}

/// The placement as `plan` prints it: each copy and its host, then each host's count.
pub fn placement_table(names: &[String], placed: &[Option<HostSpec>]) -> String {
    let mut out = format!("{:<24} HOST\n", "COPY");
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for (n, h) in names.iter().zip(placed) {
        let host = h.as_ref().map_or("this machine", |h| h.name.as_str());
        out.push_str(&format!("{n:<24} {host}\n"));
        *per.entry(host.to_string()).or_default() += 1;
    }
    let counts: Vec<String> = per.iter().map(|(h, n)| format!("{h}: {n}")).collect();
    out.push_str(&format!("copies per host: {}\n", counts.join(", ")));
    out
}

/// The image `hosts check` and `hosts prepare` work with: the lab's, else the default one.
fn image_named(lab: Option<&Lab>) -> Result<Image> {
    let spec = lab.map_or(crate::lab::defaults::IMAGE, |l| l.libvirt.image.as_str());
    Ok(image::resolve(spec)?)
}

/// SHA-256 of the image's disk, kernel and initrd here, as `sha256sum` prints them (each
/// hashed only when it changed since last time).
fn local_sums(image: &Image) -> Result<[String; 3]> {
    let record = Checksums::in_image_cache();
    let one = |p: &Path| -> Result<String> {
        record
            .local(p)
            .with_context(|| format!("reading {}", p.display()))
    };
    Ok([one(&image.disk)?, one(&image.kernel)?, one(&image.initrd)?])
}

/// What `vxlab hosts check|prepare [FILE] [--lab LAB]` works on: the inventory, the lab, its image and
/// the image's checksums here; all read, and refused if bad, before any host is reached.
struct HostsArgs {
    inv: Inventory,
    lab: Option<Lab>,
    image: Image,
    sums: [String; 3],
}

impl HostsArgs {
    fn read(command: &'static str, file: Option<&Path>, lab: Option<&Path>) -> Result<HostsArgs> {
        super::require_root(command)?;
        let path = inventory_path(file).with_context(|| {
            format!("name the host inventory: `vxlab {command} hosts.yaml`, or set VXLAB_HOSTS")
        })?;
        let inv = load(&path)?;
        let lab = lab.map(super::load).transpose()?;
        let image = image_named(lab.as_ref())?;
        let sums = local_sums(&image)?;
        Ok(HostsArgs {
            inv,
            lab,
            image,
            sums,
        })
    }
}

/// `vxlab hosts check [FILE] [--lab LAB] [--json]`: every host at once, one row each.
pub fn check(file: Option<&Path>, lab: Option<&Path>, json: bool) -> Result<u8> {
    let HostsArgs {
        inv,
        lab,
        image,
        sums,
    } = HostsArgs::read("hosts check", file, lab)?;
    let facts: Vec<HostFacts> = parallel_map(&inv.hosts, inv.hosts.len().max(1), |h| HostFacts {
        name: h.spec.name.clone(),
        uri: h.spec.uri.clone(),
        reached: remote::link(&h.spec)
            .map_err(|e| e.why)
            .and_then(|l| facts::survey(&l, Some((&image, &sums)), lab.as_ref())),
    });
    let lab_name = lab.as_ref().map(|l| l.name.as_str());
    if json {
        println!("{:#}", survey::json(&facts, lab_name));
    } else {
        print!("{}", survey::table(&facts, lab_name));
    }
    Ok(if facts.iter().all(|f| f.blocker().is_none()) {
        exit::OK
    } else {
        exit::UNAVAILABLE
    })
}

/// `vxlab hosts prepare [FILE] [--lab LAB]`: the image to every host that lacks it (or has
/// another), through storage volume uploads, then checked by checksum.
pub fn prepare(file: Option<&Path>, lab: Option<&Path>) -> Result<u8> {
    let HostsArgs {
        inv, image, sums, ..
    } = HostsArgs::read("hosts prepare", file, lab)?;
    let links = connect_all(&inv)?;
    let mut failed = 0;
    // One host at a time: the image goes out over this machine's one uplink either way.
    for link in &links {
        match prepare_one(link, &image, &sums) {
            Ok(note) => println!("{:<16} {note}", link.name()),
            Err(e) => {
                failed += 1;
                println!("{:<16} FAILED: {e:#}", link.name());
            }
        }
    }
    if failed > 0 {
        bail!(
            "the image could not be put on {failed} of {} hosts (each said above)",
            links.len()
        );
    }
    Ok(exit::OK)
}

fn prepare_one(link: &HostLink, image: &Image, sums: &[String; 3]) -> Result<String> {
    let before = facts::image_state(link, image, sums);
    if before == ImageState::Same {
        return Ok("image already there, same checksum".into());
    }
    let pool = storage::ensure_pool(link.conn())
        .map_err(|e| link.error("making vxlab's storage pool", e))?;
    let redo: Vec<String> = match &before {
        ImageState::Missing(v) | ImageState::Different(v) => v.clone(),
        _ => storage::image_files(image).map(|f| f.volume).to_vec(),
    };
    let mut sent = 0u64;
    for f in storage::image_files(image) {
        if !redo.contains(&f.volume) {
            continue;
        }
        let mut file = std::fs::File::open(&f.local)
            .with_context(|| format!("reading {}", f.local.display()))?;
        let len = file.metadata()?.len();
        // A line per tenth sent: an image is hundreds of MiB over one uplink.
        let mut tenth = 0;
        let mut said = |done: u64| {
            let now = (done * 10).checked_div(len).unwrap_or(10);
            if now > tenth {
                tenth = now;
                eprintln!(
                    "{}: {} {}% ({} of {} MiB)",
                    link.name(),
                    f.volume,
                    now * 10,
                    done >> 20,
                    len >> 20
                );
            }
        };
        storage::upload(link.conn(), &pool, &f.volume, len, &mut file, &mut said)
            .map_err(|e| link.error(format!("uploading {}", f.volume), e))?;
        sent += len;
    }
    match facts::image_state(link, image, sums) {
        ImageState::Same => Ok(format!(
            "image uploaded ({} MiB), same checksum",
            sent / (1 << 20)
        )),
        other => bail!("after the upload the image is {}", other.cell()),
    }
}
