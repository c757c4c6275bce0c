//! What `vxlab hosts check` shows of each host, and what placement needs of it: facts
//! gathered at the edge (`driver::libvirt::remote::facts`), judged and printed here.

use std::fmt::Write as _;

/// Whether a host holds the guest image, as vxlab uploads it (`vxlab hosts prepare`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageState {
    /// Every file is there with this machine's checksum.
    Same,
    /// The storage pool is missing, or some files are.
    Missing(Vec<String>),
    /// Some files differ from this machine's.
    Different(Vec<String>),
    /// It could not be looked at.
    Unknown(String),
}

impl ImageState {
    /// Whether guests can be created from it.
    pub fn usable(&self) -> bool {
        matches!(self, ImageState::Same)
    }

    /// A table cell.
    pub fn cell(&self) -> String {
        match self {
            ImageState::Same => "same checksum".into(),
            ImageState::Missing(files) => format!("missing {}", files.join(" ")),
            ImageState::Different(files) => format!("DIFFERS: {}", files.join(" ")),
            ImageState::Unknown(why) => format!("unknown ({why})"),
        }
    }
}

/// Whether libvirt's QEMU user can open `/dev/kvm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmAccess {
    /// It can.
    Usable,
    /// There is no `/dev/kvm` (guests run under software emulation).
    NoDevice,
    /// It exists and the QEMU user cannot open it: every libvirt call would be slow.
    NotOpenable(String),
    /// It could not be looked at.
    Unknown(String),
}

impl KvmAccess {
    /// A table cell.
    pub fn cell(&self) -> String {
        match self {
            KvmAccess::Usable => "usable".into(),
            KvmAccess::NoDevice => "none".into(),
            // Why, with the fix, is said under the table ("not ready:"): a long line.
            KvmAccess::NotOpenable(_) => "NOT USABLE (see below)".into(),
            KvmAccess::Unknown(why) => format!("unknown ({why})"),
        }
    }
}

/// What a reachable host has.
#[derive(Debug, Clone, PartialEq)]
pub struct Reached {
    /// libvirt's version on the host.
    pub libvirt: String,
    /// Its CPUs.
    pub cpus: usize,
    /// Cores busy with other work now.
    pub busy_cores: f64,
    /// Memory available (free, buffers and page cache), MiB.
    pub available_mib: u64,
    /// `kvm` or `tcg`, and why.
    pub accel: (String, String),
    /// The guest image.
    pub image: ImageState,
    /// `/dev/kvm` for the QEMU user.
    pub kvm: KvmAccess,
    /// Programs vxlab needs there that are missing.
    pub missing: Vec<&'static str>,
    /// Room for copies of the lab, when a lab was named.
    pub fit: Option<Fit>,
}

/// What a host has room for: copies of one lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    /// How many more copies fit.
    pub copies: usize,
    /// What one copy costs, MiB.
    pub cost_mib: u64,
    /// How many of them it brings up at once (as many as its free cores boot well).
    pub width: usize,
    /// How many copies its free cores serve well once running (its CPU room).
    pub served: usize,
}

/// One host as `hosts check` found it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostFacts {
    /// Its name.
    pub name: String,
    /// Its URI.
    pub uri: String,
    /// What it has, or why it could not be reached.
    pub reached: Result<Reached, String>,
}

impl HostFacts {
    /// What keeps a class off this host, in words; `None` when nothing does. The first of
    /// [`HostFacts::problems`].
    pub fn blocker(&self) -> Option<String> {
        self.problems().into_iter().next()
    }

    /// Everything that keeps a class off this host, in words, most basic first.
    pub fn problems(&self) -> Vec<String> {
        let r = match &self.reached {
            Err(why) => return vec![format!("cannot be reached: {why}")],
            Ok(r) => r,
        };
        let mut out = Vec::new();
        if !r.image.usable() {
            out.push(format!(
                "the image is not there as vxlab needs it ({}); run `vxlab hosts prepare`",
                r.image.cell()
            ));
        }
        if let KvmAccess::NotOpenable(why) = &r.kvm {
            out.push(format!("/dev/kvm: {why}"));
        }
        if !r.missing.is_empty() {
            out.push(format!("missing {}", r.missing.join(", ")));
        }
        out
    }
}

/// The table `vxlab hosts check` prints, one host a row; `lab` names the lab whose copies
/// were counted. Each column is as wide as its widest cell (an image that differs names its
/// files); PROGRAMS says whether every program vxlab runs on a host is there
/// (`ip`, `tcpdump`, `qemu-img`, `iptables`, `ip6tables`), else which are missing.
pub fn table(hosts: &[HostFacts], lab: Option<&str>) -> String {
    let mut out = String::new();
    let fit_head = lab.map_or("FIT".to_string(), |l| format!("COPIES OF {l}"));
    let head = [
        "HOST",
        "LIBVIRT",
        "CPUS",
        "FREE MEM",
        "ACCEL",
        "IMAGE",
        "/DEV/KVM",
        "PROGRAMS",
        fit_head.as_str(),
    ]
    .map(String::from);
    // Each reachable host's cells, in the header's order.
    let rows: Vec<Option<[String; 9]>> = hosts
        .iter()
        .map(|h| {
            let r = h.reached.as_ref().ok()?;
            let tools = if r.missing.is_empty() {
                "all present".to_string()
            } else {
                format!("missing {}", r.missing.join(","))
            };
            let fit = match r.fit {
                Some(f) => format!(
                    "{} (about {} MiB each; its free cores serve {})",
                    f.copies, f.cost_mib, f.served
                ),
                None => "-".into(),
            };
            Some([
                h.name.clone(),
                r.libvirt.clone(),
                r.cpus.to_string(),
                format!("{:.1} GiB", r.available_mib as f64 / 1024.0),
                r.accel.0.clone(),
                r.image.cell(),
                r.kvm.cell(),
                tools,
                fit,
            ])
        })
        .collect();
    let mut width = head.clone().map(|h| h.chars().count());
    for cells in rows.iter().flatten() {
        for (w, c) in width.iter_mut().zip(cells) {
            *w = (*w).max(c.chars().count());
        }
    }
    // Two spaces between columns; CPUS and FREE MEM are numbers, right-aligned; the last
    // column is not padded.
    let line = |cells: &[String; 9]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            let gap = if i == 0 { "" } else { "  " };
            let _ = match i {
                2 | 3 => write!(l, "{gap}{c:>w$}"),
                8 => write!(l, "{gap}{c}"),
                _ => write!(l, "{gap}{c:<w$}"),
            };
        }
        l
    };
    let _ = writeln!(out, "{}", line(&head));
    for (h, cells) in hosts.iter().zip(&rows) {
        if let Some(cells) = cells {
            let _ = writeln!(out, "{}", line(cells));
        } else if let Err(why) = &h.reached {
            let _ = writeln!(out, "{:<w$}  UNREACHABLE: {why}", h.name, w = width[0]);
        }
    }
    let problems: Vec<String> = hosts
        .iter()
        .flat_map(|h| {
            h.problems()
                .into_iter()
                .map(|p| format!("  {}: {p}", h.name))
        })
        .collect();
    if !problems.is_empty() {
        let _ = writeln!(out, "\nnot ready:\n{}", problems.join("\n"));
    }
    out
}

/// What `vxlab hosts check --json` prints: the table's facts, one object per host, each with
/// `ready` and, when not, the `blocker` the table names.
pub fn json(hosts: &[HostFacts], lab: Option<&str>) -> serde_json::Value {
    use serde_json::json;
    let rows: Vec<serde_json::Value> = hosts
        .iter()
        .map(|h| {
            let mut row = json!({
                "name": h.name,
                "uri": h.uri,
                "reachable": h.reached.is_ok(),
                "ready": h.blocker().is_none(),
                "blocker": h.blocker(),
            });
            match &h.reached {
                Err(why) => row["error"] = json!(why),
                Ok(r) => {
                    let (image, files, why) = match &r.image {
                        ImageState::Same => ("same-checksum", Vec::new(), None),
                        ImageState::Missing(f) => ("missing", f.clone(), None),
                        ImageState::Different(f) => ("differs", f.clone(), None),
                        ImageState::Unknown(why) => ("unknown", Vec::new(), Some(why.clone())),
                    };
                    let (kvm, kvm_why) = match &r.kvm {
                        KvmAccess::Usable => ("usable", None),
                        KvmAccess::NoDevice => ("none", None),
                        KvmAccess::NotOpenable(why) => ("not-usable", Some(why.clone())),
                        KvmAccess::Unknown(why) => ("unknown", Some(why.clone())),
                    };
                    row["libvirt"] = json!(r.libvirt);
                    row["cpus"] = json!(r.cpus);
                    row["busy_cores"] = json!(r.busy_cores);
                    row["available_mib"] = json!(r.available_mib);
                    row["accel"] = json!({"mode": r.accel.0, "why": r.accel.1});
                    row["image"] = json!({"state": image, "files": files, "why": why});
                    row["kvm"] = json!({"state": kvm, "why": kvm_why});
                    row["missing_programs"] = json!(r.missing);
                    if let Some(f) = r.fit {
                        row["copies_fit"] = json!(f.copies);
                        row["copy_cost_mib"] = json!(f.cost_mib);
                        row["copies_served_by_cores"] = json!(f.served);
                    }
                }
            }
            row
        })
        .collect();
    json!({ "lab": lab, "hosts": rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reached() -> Reached {
        Reached {
            libvirt: "9.0.0".into(),
            cpus: 2,
            busy_cores: 0.2,
            available_mib: 22_528,
            accel: ("tcg".into(), "no KVM".into()),
            image: ImageState::Same,
            kvm: KvmAccess::Usable,
            missing: Vec::new(),
            fit: Some(Fit {
                copies: 40,
                cost_mib: 468,
                width: 1,
                served: 4,
            }),
        }
    }

    fn three_hosts() -> [HostFacts; 3] {
        let mut h2 = reached();
        h2.image = ImageState::Missing(vec!["debian-12.qcow2".into()]);
        h2.missing = vec!["tcpdump"];
        [
            HostFacts {
                name: "h1".into(),
                uri: "qemu+ssh://root@h1/system".into(),
                reached: Ok(reached()),
            },
            HostFacts {
                name: "h2".into(),
                uri: "qemu+ssh://root@h2/system".into(),
                reached: Ok(h2),
            },
            HostFacts {
                name: "h3".into(),
                uri: "qemu+ssh://root@h3/system".into(),
                reached: Err("ssh: connect to host 127.0.0.3 port 22: Connection refused".into()),
            },
        ]
    }

    #[test]
    fn the_table_has_a_row_per_host_and_names_what_keeps_a_host_out() {
        let hosts = three_hosts();
        let t = table(&hosts, Some("two-vm"));
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with(
                "HOST  LIBVIRT  CPUS  FREE MEM  ACCEL  IMAGE                    /DEV/KVM  \
                 PROGRAMS         COPIES OF two-vm"
            ),
            "{t}"
        );
        assert!(
            lines[1].starts_with(
                "h1    9.0.0       2  22.0 GiB  tcg    same checksum            usable    \
                 all present      40 (about 468 MiB each; its free cores serve 4)"
            ),
            "{t}"
        );
        assert!(
            lines[2].contains("missing debian-12.qcow2") && lines[2].contains("missing tcpdump")
        );
        assert!(lines[3].starts_with("h3    UNREACHABLE: ssh: connect to host 127.0.0.3"));
        assert!(
            t.contains("not ready:\n  h2: the image is not there"),
            "{t}"
        );
        assert!(t.contains("  h3: cannot be reached: ssh: connect"), "{t}");
        assert!(hosts[0].blocker().is_none());
    }

    #[test]
    fn every_column_is_as_wide_as_its_widest_cell() {
        let [h1, mut h2, _] = three_hosts();
        let Ok(r) = &mut h2.reached else {
            unreachable!()
        };
        r.image = ImageState::Different(vec!["debian-12.initrd.img".into()]);
        r.missing = vec!["iptables", "ip6tables"];
        r.kvm = KvmAccess::NotOpenable("mode 0600, uid 0 gid 0: libvirt-qemu cannot".into());
        let t = table(&[h1, h2], None);
        let lines: Vec<&str> = t.lines().collect();
        // Every column starts where its title does, in every row.
        for title in ["ACCEL", "IMAGE", "/DEV/KVM", "PROGRAMS", "FIT"] {
            let at = lines[0].find(title).unwrap();
            for row in &lines[1..3] {
                assert_eq!(row.as_bytes()[at - 1], b' ', "{title}:\n{t}");
                assert_ne!(row.as_bytes()[at], b' ', "{title}:\n{t}");
            }
        }
        let at = lines[0].find("IMAGE").unwrap();
        assert!(lines[2][at..].starts_with("DIFFERS: debian-12.initrd.img  NOT USABLE"));
        let at = lines[0].find("PROGRAMS").unwrap();
        assert!(lines[1][at..].starts_with("all present  "), "{t}");
        assert!(
            lines[2][at..].starts_with("missing iptables,ip6tables  40 (about"),
            "{t}"
        );
        // Under the table, everything that keeps h2 out, the cell's NOT USABLE with its fix.
        assert!(
            t.contains(
                "not ready:\n  h2: the image is not there as vxlab needs it (DIFFERS: \
                 debian-12.initrd.img); run `vxlab hosts prepare`\n  h2: /dev/kvm: mode 0600"
            ),
            "{t}"
        );
        assert!(t.ends_with("  h2: missing iptables, ip6tables\n"), "{t}");
    }

    #[test]
    fn the_json_has_the_same_facts_and_blockers() {
        let v = json(&three_hosts(), Some("two-vm"));
        assert_eq!(v["lab"], "two-vm");
        let h = v["hosts"].as_array().unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h[0]["ready"], true);
        assert_eq!(h[0]["blocker"], serde_json::Value::Null);
        assert_eq!(h[0]["image"]["state"], "same-checksum");
        assert_eq!(h[0]["accel"]["mode"], "tcg");
        assert_eq!(
            (h[0]["copies_fit"].clone(), h[0]["copy_cost_mib"].clone()),
            (40.into(), 468.into())
        );
        assert_eq!(h[0]["available_mib"], 22_528);
        assert_eq!(h[1]["ready"], false);
        assert_eq!(h[1]["image"]["files"][0], "debian-12.qcow2");
        assert_eq!(h[1]["missing_programs"][0], "tcpdump");
        assert!(h[1]["blocker"]
            .as_str()
            .unwrap()
            .contains("vxlab hosts prepare"));
        assert_eq!(h[2]["reachable"], false);
        assert!(h[2]["error"]
            .as_str()
            .unwrap()
            .contains("Connection refused"));
        assert!(h[2]["blocker"]
            .as_str()
            .unwrap()
            .starts_with("cannot be reached"));
        assert!(h[2].get("cpus").is_none());
    }
}
