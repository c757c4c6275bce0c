//! The lab: what an instructor wrote, read and validated into a typed model before anything
//! on the host is touched.

pub mod defaults;
pub(crate) mod file;
pub mod instance;
pub mod read;
pub mod source;
mod validate;
pub use validate::{is_lab_name, Rules};
pub mod yaml;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use crate::iproute2::BuildMode;
pub use source::Position;

/// A validated lab.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lab {
    /// Short name, `[a-z0-9-]`; it prefixes every resource vxlab creates.
    pub name: String,
    /// Which kind of guest the lab runs on.
    pub driver: DriverKind,
    /// The host bridge and the subnet every guest's underlay interface sits in.
    pub underlay: Underlay,
    /// Guests, in file order (the order numbers their MACs).
    pub guests: Vec<Guest>,
    /// Overlay networks.
    pub vxlans: Vec<Vxlan>,
    /// Connectivity checks run after `up` and by `check`.
    pub checks: Vec<Check>,
    /// Settings of the libvirt driver (defaults when the file has none).
    pub libvirt: LibvirtSettings,
    /// When and from what iproute2 is built in guests.
    pub iproute2: Iproute2Settings,
    /// Which copy of the lab this is, in workshop mode.
    pub instance: Option<instance::Instance>,
    /// Workshop settings: where copies take their underlays from.
    pub workshop: Workshop,
}

/// The `workshop:` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Workshop {
    /// The pool each copy's underlay subnet is taken from (see [`crate::workshop`]).
    pub pool: Option<IpNet>,
}

/// The `iproute2:` section.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Iproute2Settings {
    /// When to build.
    pub build: BuildMode,
    /// What to build from.
    pub source: Option<Source>,
    /// Compiler options for the build (iproute2's `CCOPTS`), when the lab sets them: `-O0`
    /// builds several times faster in guests under software emulation.
    pub cflags: Option<String>,
    /// Where `source` is written, for errors found when the lab is run.
    #[serde(skip)]
    pub source_at: Position,
}

/// Where an iproute2 source tree comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A release tarball on this host, as written (relative to the lab file's directory).
    Tarball(PathBuf),
    /// A git repository the guest clones (it needs a route to it).
    Git {
        /// Clone URL.
        url: String,
        /// Branch or tag; the default branch when absent.
        reference: Option<String>,
    },
}

/// Where guests live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// Each guest is a Linux network namespace on this host.
    Netns,
    /// Each guest is a QEMU/KVM virtual machine managed by libvirt.
    Libvirt,
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DriverKind::Netns => "netns",
            DriverKind::Libvirt => "libvirt",
        })
    }
}

/// The underlay network.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Underlay {
    /// Host bridge name.
    pub bridge: String,
    /// Underlay subnet (network address, no host bits).
    pub subnet: IpNet,
    /// The bridge's own address in the subnet.
    pub gateway: IpAddr,
    /// Name of each guest's underlay interface (`eth0`).
    pub interface: String,
}

/// One guest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Guest {
    /// Guest name, `[a-z0-9-]`.
    pub name: String,
    /// Underlay address.
    pub address: IpAddr,
    /// Memory in MiB (libvirt).
    pub memory_mib: u64,
    /// Virtual CPUs (libvirt).
    pub vcpus: u64,
}

/// One overlay network.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Vxlan {
    /// Device name in every member guest.
    pub name: String,
    /// VXLAN network identifier, 1..=16777215.
    pub vni: u32,
    /// How broadcast, unknown unicast and multicast frames reach the other VTEPs.
    pub flood: Flood,
    /// Underlay device the VTEP sends from.
    pub dev: String,
    /// UDP destination port.
    pub port: u16,
    /// Whether the VTEP learns remote MACs from received frames.
    pub learning: bool,
    /// Whether vxlab writes every peer's MAC with its VTEP into the FDB (`fdb: static`).
    pub static_fdb: bool,
    /// MTU of the vxlan device, when the file sets one.
    pub mtu: Option<u32>,
    /// Member guests with their overlay address.
    pub members: Vec<Member>,
}

/// How a VTEP floods frames with no known destination.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flood {
    /// To a multicast group that every VTEP joins on its underlay device.
    Group(IpAddr),
    /// One unicast copy to each other member (head-end replication).
    HeadEnd,
}

/// A guest's membership in a vxlan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    /// Guest name.
    pub guest: String,
    /// Overlay address with prefix length.
    pub address: IpNet,
    /// MAC the file sets for this guest's device, overriding the derived one.
    pub mac: Option<Mac>,
}

/// A connectivity check.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Every member pings every other member inside each vxlan.
    PingAll,
    /// One ping with an expected outcome.
    Ping {
        /// Guest that sends.
        from: String,
        /// Address pinged.
        to: IpAddr,
        /// Whether it must succeed or fail.
        expect: Expect,
    },
}

/// The expected outcome of a ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// Replies arrive.
    Success,
    /// No reply arrives (isolation).
    Fail,
}

/// Settings for libvirt guests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LibvirtSettings {
    /// Connection URI.
    pub uri: String,
    /// Image path or name in the image cache.
    pub image: String,
    /// Accelerator choice.
    pub accel: Accel,
}

/// Which accelerator libvirt guests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when a probe shows it can run a guest, otherwise TCG.
    Auto,
    /// Hardware virtualization.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// True for the all-zeros address the kernel uses for flood entries.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
    /// True when the group bit is set.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        let bad = || format!("`{s}` is not a MAC address like 02:00:00:00:00:01");
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(Mac(out))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One thing wrong with a lab file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where in the file.
    pub position: Position,
    /// Field path, such as `vxlans[0].vni`.
    pub field: String,
    /// What is wrong, in words a student understands.
    pub message: String,
}

/// A lab file that cannot be used, with every problem found in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LabError {
    /// The file as the user named it.
    pub file: PathBuf,
    /// What is wrong with it.
    pub problems: Vec<Problem>,
}

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_problems(f, &self.file, "lab", &self.problems)
    }
}

/// `FILE is not a valid WHAT (N problems)`, then each problem as `file:line:column: field:
/// message`: how a lab file and a host inventory say what is wrong with them.
pub fn write_problems(
    f: &mut fmt::Formatter<'_>,
    file: &Path,
    what: &str,
    problems: &[Problem],
) -> fmt::Result {
    let n = problems.len();
    write!(
        f,
        "{} is not a valid {what} ({n} problem{})",
        file.display(),
        if n == 1 { "" } else { "s" }
    )?;
    for p in problems {
        write!(
            f,
            "\n  {}:{}:{}: {}",
            file.display(),
            p.position.line,
            p.position.column,
            if p.field.is_empty() {
                p.message.clone()
            } else {
                format!("{}: {}", p.field, p.message)
            }
        )?;
    }
    Ok(())
}

/// Reads and validates the lab file at `path`.
pub fn load(path: &Path) -> Result<Lab, LoadError> {
    load_with_text(path).map(|(lab, _)| lab)
}

/// Reads and validates the lab file at `path`, and returns the text it was read from: `up`
/// keeps that copy, not a second read that may differ.
pub fn load_with_text(path: &Path) -> Result<(Lab, String), LoadError> {
    let text = read_text(path)?;
    let lab = parse(&text, path).map_err(LoadError::Invalid)?;
    Ok((lab, text))
}

/// Reads a running lab's recorded copy at `path`, held to [`Rules::Recorded`].
pub fn load_recorded(path: &Path) -> Result<(Lab, String), LoadError> {
    let text = read_text(path)?;
    let lab = parse_with(&text, path, Rules::Recorded).map_err(LoadError::Invalid)?;
    Ok((lab, text))
}

/// The text of the lab file at `path`: a regular file of at most [`read::MAX_LAB_BYTES`], in
/// UTF-8. Anything else is an invalid lab (exit 65), never a read that blocks or fills memory.
pub fn read_text(path: &Path) -> Result<String, LoadError> {
    read::lab_text(path).map_err(|e| match e {
        read::ReadError::Io(source) => LoadError::Read {
            path: path.to_path_buf(),
            source,
        },
        other => LoadError::Invalid(LabError {
            file: path.to_path_buf(),
            problems: vec![Problem {
                position: other.position().unwrap_or(Position { line: 1, column: 1 }),
                field: String::new(),
                message: other.to_string(),
            }],
        }),
    })
}

/// Validates lab text; `file` only names it in errors. Every problem is reported, sorted by
/// position, except that a file that is not well-formed YAML stops at that.
pub fn parse(text: &str, file: &Path) -> Result<Lab, LabError> {
    parse_with(text, file, Rules::New)
}

/// [`parse`], held to `rules`.
pub fn parse_with(text: &str, file: &Path, rules: Rules) -> Result<Lab, LabError> {
    let fail = |problems: Vec<Problem>| LabError {
        file: file.to_path_buf(),
        problems: sorted(problems),
    };
    let (doc, map) = read_document(text).map_err(fail)?;
    // A key given twice is said, and the rest is still checked, so that one run says every
    // problem; what validation says of the repeated field itself would only repeat it.
    let twice = duplicates(&map, "appears twice; every name must be unique");
    let (raw, reader) = file::read(&doc);
    let checked = validate::validate(raw, &map, rules);
    let mut problems = twice.clone();
    problems.extend(reader.problems);
    match checked {
        Ok(lab) if problems.is_empty() => return Ok(lab),
        Ok(_) => {}
        // What validation says about a placeholder repeats a problem already reported.
        Err(found) => problems.extend(found.into_iter().filter(|p| {
            !reader.unreadable.iter().any(|u| covers(u, &p.field))
                && !twice.iter().any(|t| covers(&t.field, &p.field))
        })),
    }
    Err(fail(problems))
}

/// The YAML document in `text` and where each of its fields is, or why it is not
/// well-formed YAML.
fn read_document(text: &str) -> Result<(yaml::Node, source::SourceMap), Vec<Problem>> {
    let doc = yaml::load(text).map_err(|e| {
        vec![Problem {
            position: e.at,
            field: String::new(),
            message: e.message,
        }]
    })?;
    let map = source::SourceMap::of(&doc);
    Ok((doc, map))
}

/// Each key given twice, said with `twice`.
fn duplicates(map: &source::SourceMap, twice: &str) -> Vec<Problem> {
    map.duplicate_keys
        .iter()
        .map(|(field, position)| Problem {
            position: *position,
            field: field.clone(),
            message: twice.into(),
        })
        .collect()
}

/// Problems in file order, each once.
pub fn sorted(mut problems: Vec<Problem>) -> Vec<Problem> {
    problems.sort_by_key(|p| (p.position.line, p.position.column));
    problems.dedup();
    problems
}

/// The YAML document in `text` and where each of its fields is, or what stops reading it
/// there: YAML that is not well-formed, or keys given twice (each said with `twice`). The lab
/// file and the host inventory are read so.
pub fn document(text: &str, twice: &str) -> Result<(yaml::Node, source::SourceMap), Vec<Problem>> {
    let (doc, map) = read_document(text)?;
    let repeated = duplicates(&map, twice);
    if !repeated.is_empty() {
        return Err(repeated);
    }
    Ok((doc, map))
}

/// Whether `field` is `path` or inside it.
fn covers(path: &str, field: &str) -> bool {
    path.is_empty()
        || field == path
        || field
            .strip_prefix(path)
            .is_some_and(|rest| rest.starts_with(['.', '[']))
}

/// Reading a lab file failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read lab file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid lab.
    #[error(transparent)]
    Invalid(LabError),
}

impl Lab {
    /// The iproute2 tarball on this host, resolved against the directory of `lab_file`; an
    /// error naming the field when the lab names one that cannot be read.
    pub fn tarball(&self, lab_file: &Path) -> Result<Option<PathBuf>, LabError> {
        let Some(Source::Tarball(p)) = &self.iproute2.source else {
            return Ok(None);
        };
        let path = lab_file.parent().unwrap_or(Path::new(".")).join(p);
        match std::fs::File::open(&path) {
            Ok(_) if path.is_file() => Ok(Some(path)),
            r => Err(LabError {
                file: lab_file.to_path_buf(),
                problems: vec![Problem {
                    position: self.iproute2.source_at,
                    field: "iproute2.source".into(),
                    message: format!(
                        "cannot read the tarball {}: {}",
                        path.display(),
                        r.err()
                            .map(|e| e.to_string())
                            .unwrap_or_else(|| "not a file".into())
                    ),
                }],
            }),
        }
    }

    /// The guest named `name`.
    pub fn guest(&self, name: &str) -> Option<&Guest> {
        self.guests.iter().find(|g| g.name == name)
    }
}
