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

impl Format {
    /// The format asked for, else the one the output file's extension names (`.svg`,
    /// `.mmd`/`.mermaid`, `.dot`/`.gv`), else DOT for a file without one; an extension vxlab
    /// cannot draw (`.png`) is refused rather than filled with DOT text.
    pub fn choose(
        asked: Option<Format>,
        output: Option<&std::path::Path>,
    ) -> Result<Format, String> {
        if let Some(f) = asked {
            return Ok(f);
        }
        let Some(ext) = output.and_then(|o| o.extension()) else {
            return Ok(Format::Dot);
        };
        match ext.to_string_lossy().to_ascii_lowercase().as_str() {
            "svg" => Ok(Format::Svg),
            "mmd" | "mermaid" => Ok(Format::Mermaid),
            "dot" | "gv" => Ok(Format::Dot),
            other => Err(format!(
                "vxlab graph draws DOT (.dot, .gv), SVG (.svg) and Mermaid (.mmd), not .{other}; \
                 name the file so, or give --format (for PNG: `vxlab graph LAB -o g.svg`, then \
                 `rsvg-convert g.svg -o g.png`)"
            )),
        }
    }
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

/// The one font of every label: Graphviz writes it into the SVG as `Helvetica,sans-Serif`, so
/// a viewer without Helvetica still draws a sans-serif.
const FONT: &str = "Helvetica";

/// Colours told apart by people with any common colour blindness (Okabe and Ito), with a
/// light tint of each for fills: the first VNIs', in VNI order.
const PALETTE: [(&str, &str); 6] = [
    ("#0072B2", "#D6EAF5"),
    ("#D55E00", "#F9E0CC"),
    ("#009E73", "#CCEDE3"),
    ("#CC79A7", "#F4E3ED"),
    ("#E69F00", "#FAECCC"),
    ("#56B4E9", "#DDF0FB"),
];

/// An HSL colour (hue in degrees, saturation and lightness 0 to 1) as `#RRGGBB`.
fn hsl(hue: f64, saturation: f64, lightness: f64) -> String {
    let c = (1.0 - (2.0 * lightness - 1.0).abs()) * saturation;
    let h = hue.rem_euclid(360.0) / 60.0;
    let x = c * (1.0 - (h % 2.0 - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = lightness - c / 2.0;
    let byte = |v: f64| ((v + m) * 255.0).round().clamp(0.0, 255.0) as u8;
    format!("#{:02X}{:02X}{:02X}", byte(r), byte(g), byte(b))
}

/// The hue of a `#RRGGBB` colour, in degrees.
fn hue(hex: &str) -> f64 {
    let c = |i: usize| f64::from(u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0)) / 255.0;
    let (r, g, b) = (c(1), c(3), c(5));
    let (max, min) = (r.max(g).max(b), r.min(g).min(b));
    let d = max - min;
    if d == 0.0 {
        return 0.0;
    }
    let h = if max == r {
        (g - b) / d
    } else if max == g {
        (b - r) / d + 2.0
    } else {
        (r - g) / d + 4.0
    };
    (h * 60.0).rem_euclid(360.0)
}

/// How far apart two hues are round the colour circle, in degrees.
fn hue_distance(a: f64, b: f64) -> f64 {
    let d = (a - b).rem_euclid(360.0);
    d.min(360.0 - d)
}

/// The whole degree farthest round the colour circle from every hue of `hues` (the first
/// such, counting from red).
fn farthest_hue(hues: &[f64]) -> f64 {
    let spread = |h: f64| {
        hues.iter()
            .map(|u| hue_distance(h, *u))
            .fold(360.0, f64::min)
    };
    (1..360).map(f64::from).fold(
        0.0,
        |best, h| if spread(h) > spread(best) { h } else { best },
    )
}

/// The colour (line, fill) of each VNI, every one its own: the palette's for the first, then
/// for each next VNI the hue farthest from every hue already given (the middle of the widest
/// gap left), its line dark enough to stand out on white and its fill a tint light enough for
/// dark text.
fn colours(plan: &Plan) -> BTreeMap<u32, (String, String)> {
    let mut hues: Vec<f64> = Vec::new();
    let mut taken = std::collections::HashSet::new();
    let mut out = BTreeMap::new();
    for (i, vni) in vnis(plan).keys().enumerate() {
        let (line, fill) = match PALETTE.get(i) {
            Some((line, fill)) => (line.to_string(), fill.to_string()),
            None => {
                let mut h = farthest_hue(&hues);
                // A hue that gives a colour already taken (rounding) is moved on until new.
                loop {
                    let (line, fill) = (hsl(h, 0.75, 0.32), hsl(h, 0.75, 0.90));
                    if !taken.contains(&line) && !taken.contains(&fill) {
                        break (line, fill);
                    }
                    h += 1.0;
                }
            }
        };
        hues.push(hue(&line));
        taken.extend([line.clone(), fill.clone()]);
        out.insert(*vni, (line, fill));
    }
    out
}

/// Text inside a Graphviz HTML-like label.
fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Height over width of a 16:9 slide. Graphviz spreads the drawing to this shape, moving
/// nodes apart rather than shrinking them, so the text keeps its size.
const SLIDE_RATIO: &str = "0.5625";

/// The topology in Graphviz DOT (a digraph drawn without arrowheads, whose invisible edges
/// keep the guests in file order), for a 16:9 slide: the VNIs on top, each guest's vxlan
/// devices and underlay interface below them, the host bridge at the bottom beside a legend; each VNI
/// in its own colour (its node, its devices, its edges, its legend row), one sans-serif font.
pub fn dot(plan: &Plan) -> String {
    let colour = colours(plan);
    let mut o = String::new();
    let _ = writeln!(o, "digraph {} {{", dq(&plan.lab));
    // The title is the legend's first row: a graph label would sit outside the 16:9 shape.
    let _ = writeln!(o, "  fontname={FONT};");
    let _ = writeln!(
        o,
        "  ratio={SLIDE_RATIO}; pad=0.1; nodesep=0.4; ranksep=0.6; newrank=true;"
    );
    let _ = writeln!(o, "  node [shape=box, style=\"rounded,filled\", fillcolor=white, fontname={FONT}, fontsize=14];");
    let _ = writeln!(
        o,
        "  edge [dir=none, fontname={FONT}, fontsize=12, color=\"#555555\"];"
    );
    let bridge = format!("bridge:{}", plan.bridge);
    let _ = writeln!(
        o,
        "  {} [shape=ellipse, style=filled, fillcolor=\"#EEEEEE\", label={}];",
        dq(&bridge),
        dq(&format!("host bridge {}\n{}", plan.bridge, plan.gateway))
    );
    for (vni, (label, _)) in vnis(plan) {
        let (line, fill) = &colour[&vni];
        let _ = writeln!(
            o,
            "  {} [shape=hexagon, style=\"filled,dashed\", color=\"{line}\", fillcolor=\"{fill}\", \
             penwidth=2, label={}];",
            dq(&format!("vni:{vni}")),
            dq(&label)
        );
    }
    // Each guest one node, narrow so that six fit a slide: its name, its vxlan devices one
    // above the other in their VNI's colours, its underlay interface; each edge meets its own
    // device at its side (the bridge's, below), crossing no text.
    for g in &plan.guests {
        let mut rows = format!(
            "<tr><td border=\"0\"><font point-size=\"16\">{}</font></td></tr>",
            html(&g.name)
        );
        for v in &g.vteps {
            let (line, fill) = &colour[&v.vni];
            let _ = write!(
                rows,
                "<tr><td port=\"{}\" bgcolor=\"{fill}\" color=\"{line}\" border=\"2\" \
                 style=\"rounded\">{}  VNI {}<br/>{}<br/>{}<br/>dev {}</td></tr>",
                html(&v.device),
                html(&v.device),
                v.vni,
                html(&v.address.to_string()),
                v.mac,
                html(&v.dev)
            );
        }
        let _ = write!(
            rows,
            "<tr><td port=\"{}\" border=\"1\" style=\"rounded\">{}<br/>{}</td></tr>",
            html(&g.interface),
            html(&g.interface),
            html(&g.underlay.to_string())
        );
        let _ = writeln!(
            o,
            "  {} [shape=box, style=\"rounded\", color=\"#888888\", margin=0.1, label=<<table \
             border=\"0\" cellborder=\"0\" cellspacing=\"8\" cellpadding=\"6\">{rows}</table>>];",
            dq(&format!("guest:{}", g.name))
        );
        let node = dq(&format!("guest:{}", g.name));
        let _ = writeln!(o, "  {node}:{}:s -> {};", dq(&g.interface), dq(&bridge));
        for v in &g.vteps {
            let (line, _) = &colour[&v.vni];
            // Written VNI first, so the VNI ranks above the guests.
            let _ = writeln!(
                o,
                "  {} -> {node}:{}:w [style=dashed, color=\"{line}\", penwidth=2];",
                dq(&format!("vni:{}", v.vni)),
                dq(&v.device)
            );
        }
    }
    // The guests left to right in file order.
    if plan.guests.len() > 1 {
        let chain: Vec<String> = plan
            .guests
            .iter()
            .map(|g| dq(&format!("guest:{}", g.name)))
            .collect();
        let _ = writeln!(
            o,
            "  {{ rank=same; {} [style=invis]; }}",
            chain.join(" -> ")
        );
    }
    // The legend: the lab, then one row per VNI in its colour, under the bridge.
    let mut rows = format!(
        "<tr><td colspan=\"2\" align=\"left\"><font point-size=\"18\">lab {} ({} driver)</font></td></tr>",
        html(&plan.lab),
        plan.driver
    );
    for (vni, (_, members)) in vnis(plan) {
        let (line, fill) = &colour[&vni];
        let v = plan
            .guests
            .iter()
            .flat_map(|g| &g.vteps)
            .find(|v| v.vni == vni)
            .expect("a VNI has a member");
        let _ = write!(
            rows,
            "<tr><td bgcolor=\"{line}\" width=\"18\"> </td><td bgcolor=\"{fill}\" align=\"left\">\
             VNI {vni}: {}, {}, overlay {}, {members} guests</td></tr>",
            html(&v.device),
            html(&flooding(v)),
            html(&v.address.trunc().to_string())
        );
    }
    let _ = writeln!(
        o,
        "  legend [shape=plaintext, style=\"\", label=<<table border=\"0\" cellborder=\"0\" \
         cellspacing=\"2\" cellpadding=\"4\">{rows}</table>>];"
    );
    // Under the bridge, centred: beside it, its width would push the drawing to one side.
    let _ = writeln!(o, "  {} -> legend [style=invis];", dq(&bridge));
    o.push_str("}\n");
    o
}

/// The topology as a Mermaid flowchart, each VNI in its colour as in the DOT.
pub fn mermaid(plan: &Plan) -> String {
    let colour = colours(plan);
    let mut o = String::from("flowchart TB\n");
    let br = mid(&format!("bridge_{}", plan.bridge));
    let _ = writeln!(
        o,
        "  {br}([\"{}\"])",
        mtext(&format!("host bridge {}\n{}", plan.bridge, plan.gateway))
    );
    for (vni, (label, _)) in vnis(plan) {
        let _ = writeln!(o, "  vni{vni}{{{{\"{}\"}}}}", mtext(&label));
    }
    // Mermaid styles an edge by its number, in the order edges are written.
    let mut edges = 0usize;
    let mut vni_edges: Vec<(usize, u32)> = Vec::new();
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
                "    {gid}_{}[\"{}\"]:::vni{}",
                mid(&v.device),
                mtext(&format!(
                    "{}  VNI {}\n{}\n{}",
                    v.device, v.vni, v.address, v.mac
                )),
                v.vni
            );
        }
        o.push_str("  end\n");
        let _ = writeln!(o, "  {gid}_{} --- {br}", mid(&g.interface));
        edges += 1;
        for v in &g.vteps {
            let _ = writeln!(o, "  vni{} -.- {gid}_{}", v.vni, mid(&v.device));
            let _ = writeln!(
                o,
                "  {gid}_{} -->|dev| {gid}_{}",
                mid(&v.device),
                mid(&v.dev)
            );
            vni_edges.extend([(edges, v.vni), (edges + 1, v.vni)]);
            edges += 2;
        }
    }
    // The legend: one node per VNI in its colour, saying what the colour stands for.
    o.push_str("  subgraph legend[\"legend\"]\n");
    for (vni, (label, _)) in vnis(plan) {
        let _ = writeln!(
            o,
            "    legend{vni}[\"{}\"]:::vni{vni}",
            mtext(label.lines().next().unwrap_or_default())
        );
    }
    o.push_str("  end\n");
    for (n, vni) in &vni_edges {
        if let Some((line, _)) = colour.get(vni) {
            let _ = writeln!(o, "  linkStyle {n} stroke:{line},stroke-width:2px");
        }
    }
    for (vni, (line, fill)) in &colour {
        let _ = writeln!(
            o,
            "  classDef vni{vni} fill:{fill},stroke:{line},stroke-width:2px"
        );
        let _ = writeln!(o, "  class vni{vni} vni{vni}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_is_the_one_asked_for_else_the_files_extension_else_dot() {
        use std::path::Path;
        let svg = Some(Path::new("lab.SVG"));
        assert_eq!(Format::choose(None, svg), Ok(Format::Svg));
        assert_eq!(
            Format::choose(None, Some(Path::new("x.mmd"))),
            Ok(Format::Mermaid)
        );
        assert_eq!(
            Format::choose(None, Some(Path::new("x.dot"))),
            Ok(Format::Dot)
        );
        assert_eq!(
            Format::choose(None, Some(Path::new("lab"))),
            Ok(Format::Dot)
        );
        assert_eq!(Format::choose(None, None), Ok(Format::Dot));
        assert_eq!(Format::choose(Some(Format::Dot), svg), Ok(Format::Dot));
        let png = Format::choose(None, Some(Path::new("g.png"))).unwrap_err();
        assert!(
            png.contains("not .png") && png.contains("--format"),
            "{png}"
        );
        let forced = Format::choose(Some(Format::Dot), Some(Path::new("g.png")));
        assert_eq!(forced, Ok(Format::Dot));
    }

    fn plan_of(file: &str) -> Plan {
        let path = format!("{}/labs/{file}", env!("CARGO_MANIFEST_DIR"));
        crate::plan::plan(&crate::lab::load(std::path::Path::new(&path)).unwrap())
    }

    #[test]
    fn the_seed_graph_names_bridge_guests_addresses_and_the_vni() {
        let d = dot(&plan_of("two-vm.yaml"));
        for needle in [
            "digraph \"two-vm\" {",
            "\"bridge:vbr0\"",
            "host bridge vbr0\\n192.168.10.1/24",
            "\"guest:vm-a\"",
            "eth0<br/>192.168.10.2/24",
            "\"vni:42\"",
            "group 239.1.1.1",
            "192.168.42.3/24",
        ] {
            assert!(d.contains(needle), "{needle} missing:\n{d}");
        }
        // Every brace closes.
        assert_eq!(d.matches('{').count(), d.matches('}').count());
        let m = mermaid(&plan_of("two-vm.yaml"));
        assert!(m.starts_with("flowchart TB\n"));
        assert!(m.contains("subgraph vm_a[\"vm-a\"]"), "{m}");
        assert!(m.contains("vni42 -.- vm_b_vxlan0"), "{m}");
    }

    #[test]
    fn each_vni_has_its_own_colour_on_its_node_devices_edges_and_legend() {
        let d = dot(&plan_of("two-vni.yaml"));
        let (blue, orange) = (PALETTE[0].0, PALETTE[1].0);
        let line = |needle: &str| {
            d.lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("{needle} missing:\n{d}"))
                .to_string()
        };
        assert!(line("\"vni:42\" [").contains(blue));
        assert!(line("\"vni:43\" [").contains(orange));
        assert!(line("\"vni:43\" -> \"guest:vm-c\":\"vxlan43\"").contains(orange));
        let b = line("\"guest:vm-b\" [");
        let cell =
            |c: &str, dev: &str| format!("color=\"{c}\" border=\"2\" style=\"rounded\">{dev}");
        assert!(b.contains(&cell(blue, "vxlan42")), "{b}");
        assert!(b.contains(&cell(orange, "vxlan43")), "{b}");
        let legend = line("legend [");
        assert!(
            legend.contains(&format!("bgcolor=\"{blue}\"")) && legend.contains("VNI 43: vxlan43")
        );
        // One font for the graph, every node and every edge.
        assert_eq!(d.matches("fontname=").count(), 3, "{d}");
        assert_eq!(d.matches(&format!("fontname={FONT}")).count(), 3);
        assert!(d.contains("ratio=0.5625"));
        // The Mermaid form too: each VNI's edges (to its node, and `dev`) and its legend entry.
        let m = mermaid(&plan_of("two-vni.yaml"));
        let edges: Vec<&str> = m
            .lines()
            .filter(|l| l.contains(" -.- ") || l.contains(" --- ") || l.contains(" -->"))
            .collect();
        let styled = |colour: &str| -> Vec<&str> {
            m.lines()
                .filter(|l| l.contains("linkStyle") && l.contains(colour))
                .map(|l| {
                    let n: usize = l.split_whitespace().nth(1).unwrap().parse().unwrap();
                    edges[n]
                })
                .collect()
        };
        assert_eq!(
            styled(orange),
            [
                "  vni43 -.- vm_b_vxlan43",
                "  vm_b_vxlan43 -->|dev| vm_b_eth0",
                "  vni43 -.- vm_c_vxlan43",
                "  vm_c_vxlan43 -->|dev| vm_c_eth0",
            ],
            "{m}"
        );
        assert_eq!(styled(blue).len(), 4, "{m}");
        assert!(m.contains("legend43[\"VNI 43 (vxlan43)\"]:::vni43"), "{m}");
    }

    /// Relative luminance (WCAG) of a `#RRGGBB` colour.
    fn luminance(hex: &str) -> f64 {
        let channel = |i: usize| {
            let v = f64::from(u8::from_str_radix(&hex[i..i + 2], 16).unwrap()) / 255.0;
            if v <= 0.039_28 {
                v / 12.92
            } else {
                ((v + 0.055) / 1.055).powf(2.4)
            }
        };
        0.2126 * channel(1) + 0.7152 * channel(3) + 0.0722 * channel(5)
    }

    #[test]
    fn every_vni_of_a_ten_vni_lab_has_its_own_colour_and_dark_text_reads_on_each() {
        let mut text = String::from(
            "name: ten-vni\ndriver: netns\nunderlay:\n  bridge: vxbr-ten\n  subnet: \
             192.168.20.0/24\nguests:\n  vm-a: { address: 192.168.20.2 }\n  vm-b: { address: \
             192.168.20.3 }\nvxlans:\n",
        );
        for i in 0..10 {
            let vni = 100 + i;
            text.push_str(&format!(
                "  - name: vxlan{vni}\n    vni: {vni}\n    group: 239.1.1.{i}\n    addresses:\n      \
                 vm-a: 10.{i}.0.2/24\n      vm-b: 10.{i}.0.3/24\n"
            ));
        }
        let lab = crate::lab::parse(&text, std::path::Path::new("ten-vni.yaml")).unwrap();
        let plan = crate::plan::plan(&lab);
        let colour = colours(&plan);
        assert_eq!(colour.len(), 10);
        let mut all: Vec<&String> = colour.values().flat_map(|(l, f)| [l, f]).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 20, "{colour:?}");
        // The first six are the palette's, in VNI order.
        for (i, (line, fill)) in colour.values().take(6).enumerate() {
            assert_eq!((line.as_str(), fill.as_str()), PALETTE[i]);
        }
        for (line, fill) in colour.values() {
            // Black text on the fill: at least WCAG's 7:1.
            assert!((luminance(fill) + 0.05) / 0.05 >= 7.0, "{fill}");
            assert!(fill.len() == 7 && line.len() == 7);
        }
        // The lines past the palette stand out on white (3:1, for lines and shapes).
        for (line, _) in colour.values().skip(6) {
            assert!(1.05 / (luminance(line) + 0.05) >= 3.0, "{line}");
        }
        // Each colour is on its VNI's node in the drawing, and in the Mermaid class.
        let d = dot(&plan);
        let m = mermaid(&plan);
        for (vni, (line, fill)) in &colour {
            let node = d
                .lines()
                .find(|l| l.contains(&format!("\"vni:{vni}\" [")))
                .unwrap();
            assert!(
                node.contains(line.as_str()) && node.contains(fill.as_str()),
                "{node}"
            );
            assert!(m.contains(&format!("classDef vni{vni} fill:{fill},stroke:{line}")));
        }
    }

    #[test]
    fn two_vnis_are_two_nodes() {
        let d = dot(&plan_of("two-vni.yaml"));
        let vni_nodes = d.lines().filter(|l| l.contains("shape=hexagon")).count();
        assert_eq!(vni_nodes, 2, "{d}");
    }
}
