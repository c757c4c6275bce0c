//! The lab's topology as a picture a teacher can paste: Graphviz DOT and Mermaid. Pure: drawn
//! from the plan (host bridge, guests with their underlay addresses, vxlan devices with VNI,
//! flooding and overlay address, one node per VNI joining its members).

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::lab::Flood;
use crate::plan::{Plan, VtepPlan};

/// The formats of `vxlab graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Graphviz DOT.
    Dot,
    /// A Mermaid flowchart, to paste into Markdown.
    Mermaid,
    /// SVG, drawn from the DOT by Graphviz's `dot`.
    Svg,
}

/// A string as a DOT quoted ID; line breaks become DOT's `\n`.
fn dq(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("\"{escaped}\"")
}

/// An identifier Mermaid accepts: letters, digits and `_`.
fn mid(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Text inside a Mermaid `["..."]` label: no quotes, `<br/>` for new lines.
fn mtext(s: &str) -> String {
    s.replace('"', "#quot;").replace('\n', "<br/>")
}

fn flooding(v: &VtepPlan) -> String {
    match &v.flood {
        Flood::Group(g) => format!("group {g}"),
        Flood::HeadEnd => "head-end replication".into(),
    }
}

/// One node per VNI: label and member count, in VNI order.
fn vnis(plan: &Plan) -> BTreeMap<u32, (String, usize)> {
    let mut out: BTreeMap<u32, (String, usize)> = BTreeMap::new();
    for v in plan.guests.iter().flat_map(|g| &g.vteps) {
        let e = out.entry(v.vni).or_insert_with(|| {
            (
                format!(
                    "VNI {} ({})\n{}\nUDP {}\noverlay {}",
                    v.vni,
                    v.device,
                    flooding(v),
                    v.port,
                    v.address.trunc()
                ),
                0,
            )
        });
        e.1 += 1;
    }
    out
}

/// The topology in Graphviz DOT.
pub fn dot(plan: &Plan) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "graph {} {{", dq(&plan.lab));
    let _ = writeln!(
        o,
        "  label={}; labelloc=t; fontname=\"Helvetica\";",
        dq(&format!("lab {} ({} driver)", plan.lab, plan.driver))
    );
    let _ = writeln!(o, "  node [shape=box, fontname=\"Helvetica\"];");
    let bridge = format!("bridge:{}", plan.bridge);
    let _ = writeln!(
        o,
        "  {} [shape=ellipse, label={}];",
        dq(&bridge),
        dq(&format!("host bridge {}\n{}", plan.bridge, plan.gateway))
    );
    for (vni, (label, _)) in vnis(plan) {
        let _ = writeln!(
            o,
            "  {} [shape=hexagon, style=dashed, label={}];",
            dq(&format!("vni:{vni}")),
            dq(&label)
        );
    }
    for g in &plan.guests {
        let under = format!("{}:{}", g.name, g.interface);
        let _ = writeln!(o, "  subgraph {} {{", dq(&format!("cluster_{}", g.name)));
        let _ = writeln!(o, "    label={};", dq(&g.name));
        let _ = writeln!(
            o,
            "    {} [label={}];",
            dq(&under),
            dq(&format!("{}\n{}", g.interface, g.underlay))
        );
        for v in &g.vteps {
            let _ = writeln!(
                o,
                "    {} [label={}];",
                dq(&format!("{}:{}", g.name, v.device)),
                dq(&format!(
                    "{}  VNI {}\n{}\n{}",
                    v.device, v.vni, v.address, v.mac
                ))
            );
        }
        let _ = writeln!(o, "  }}");
        let _ = writeln!(o, "  {} -- {};", dq(&under), dq(&bridge));
        for v in &g.vteps {
            let dev = format!("{}:{}", g.name, v.device);
            let _ = writeln!(
                o,
                "  {} -- {} [label=\"dev\"];",
                dq(&dev),
                dq(&format!("{}:{}", g.name, v.dev))
            );
            let _ = writeln!(
                o,
                "  {} -- {} [style=dashed];",
                dq(&dev),
                dq(&format!("vni:{}", v.vni))
            );
        }
    }
    o.push_str("}\n");
    o
}

/// The topology as a Mermaid flowchart.
pub fn mermaid(plan: &Plan) -> String {
    let mut o = String::from("flowchart LR\n");
    let br = mid(&format!("bridge_{}", plan.bridge));
    let _ = writeln!(
        o,
        "  {br}([\"{}\"])",
        mtext(&format!("host bridge {}\n{}", plan.bridge, plan.gateway))
    );
    for (vni, (label, _)) in vnis(plan) {
        let _ = writeln!(o, "  vni{vni}{{{{\"{}\"}}}}", mtext(&label));
    }
    for g in &plan.guests {
        let gid = mid(&g.name);
        let _ = writeln!(o, "  subgraph {gid}[\"{}\"]", mtext(&g.name));
        let _ = writeln!(
            o,
            "    {gid}_{}[\"{}\"]",
            mid(&g.interface),
            mtext(&format!("{}\n{}", g.interface, g.underlay))
        );
        for v in &g.vteps {
            let _ = writeln!(
                o,
                "    {gid}_{}[\"{}\"]",
                mid(&v.device),
                mtext(&format!(
                    "{}  VNI {}\n{}\n{}",
                    v.device, v.vni, v.address, v.mac
                ))
            );
        }
        o.push_str("  end\n");
        let _ = writeln!(o, "  {gid}_{} --- {br}", mid(&g.interface));
        for v in &g.vteps {
            let _ = writeln!(
                o,
                "  {gid}_{} -->|dev| {gid}_{}",
                mid(&v.device),
                mid(&v.dev)
            );
            let _ = writeln!(o, "  {gid}_{} -.- vni{}", mid(&v.device), v.vni);
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(file: &str) -> Plan {
        let path = format!("{}/labs/{file}", env!("CARGO_MANIFEST_DIR"));
        crate::plan::plan(&crate::lab::load(std::path::Path::new(&path)).unwrap())
    }

    #[test]
    fn the_seed_graph_names_bridge_guests_addresses_and_the_vni() {
        let d = dot(&plan_of("two-vm.yaml"));
        for needle in [
            "graph \"two-vm\" {",
            "\"bridge:vbr0\"",
            "host bridge vbr0\\n192.168.10.1/24",
            "\"cluster_vm-a\"",
            "eth0\\n192.168.10.2/24",
            "\"vni:42\"",
            "group 239.1.1.1",
            "192.168.42.3/24",
        ] {
            assert!(d.contains(needle), "{needle} missing:\n{d}");
        }
        // Every brace closes.
        assert_eq!(d.matches('{').count(), d.matches('}').count());
        let m = mermaid(&plan_of("two-vm.yaml"));
        assert!(m.starts_with("flowchart LR\n"));
        assert!(m.contains("subgraph vm_a[\"vm-a\"]"), "{m}");
        assert!(m.contains("vm_b_vxlan0 -.- vni42"), "{m}");
    }

    #[test]
    fn two_vnis_are_two_nodes() {
        let d = dot(&plan_of("two-vni.yaml"));
        let vni_nodes = d.lines().filter(|l| l.contains("shape=hexagon")).count();
        assert_eq!(vni_nodes, 2, "{d}");
    }
}
