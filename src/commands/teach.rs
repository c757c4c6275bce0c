//! The teaching commands: `show`, `walk`, `capture`, `graph`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{
    engine, exit, image_for, load, recipe, require_programs, require_root, resolve, running_guest,
    HostError,
};
use crate::graph::Format;
use crate::packet::{self, VxlanPacket};
use crate::plan::{self, Plan};
use crate::progress::Progress;
use crate::views::Section;
use crate::{graph as draw, report, views};

/// `vxlab show GUEST [link|maddr|fdb|route]`
pub fn show(lab: Option<&Path>, guest: &str, what: Option<Section>, json: bool) -> Result<u8> {
    require_root("show")?;
    let (lab, p, i) = running_guest(lab, guest)?;
    let g = &p.guests[i];
    let st = engine(&lab, None)?.inspect(&p, g)?;
    let tables = views::tables(&p, g, &st, what);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"guest": guest, "tables": tables}))?
        );
    } else {
        println!("{guest} in lab {}\n", lab.name);
        for t in &tables {
            println!("{}", views::render(t));
        }
    }
    Ok(exit::OK)
}

/// `vxlab walk LAB`
pub fn walk(path: &Path, no_pause: bool) -> Result<u8> {
    let lab = load(path)?;
    require_root("walk")?;
    require_programs(lab.driver)?;
    let text = std::fs::read_to_string(path)?;
    let image = image_for(&lab)?;
    let p = plan::plan(&lab);
    let pause = !no_pause && std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    println!(
        "walking lab {}: {} guests, built one kind of step at a time{}",
        lab.name,
        p.guests.len(),
        if pause { " (Enter goes on)" } else { "" }
    );
    let mut show = |stage: &crate::outcome::Stage| {
        print!("{}", views::walk_stage(&p, stage));
        let _ = std::io::stdout().flush();
        if pause {
            print!("[Enter] ");
            let _ = std::io::stdout().flush();
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        }
    };
    let o = engine(&lab, image)?
        .with_recipe(recipe(&lab, path)?)
        .walk(&p, path, &text, &Progress::new(), &mut show)
        .with_context(|| {
            format!(
                "while walking lab {}; `vxlab down {}` removes what was built",
                lab.name, lab.name
            )
        })?;
    println!("\n== 5. the checks\n");
    print!("{}", report::build(&p, &o).human());
    println!(
        "\nthe lab stays up: `vxlab show GUEST`, `vxlab capture GUEST`, `vxlab down {}`",
        lab.name
    );
    Ok(if o.verdict.ok() {
        exit::OK
    } else {
        exit::CHECK_FAILED
    })
}

/// Options of `vxlab capture`.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// Overlay address to ping.
    pub to: Option<std::net::IpAddr>,
    /// Echo requests to send.
    pub count: u32,
    /// Keep learned entries.
    pub keep: bool,
    /// Where to write the pcap.
    pub pcap: Option<PathBuf>,
    /// JSON output.
    pub json: bool,
}

/// `vxlab capture GUEST`
pub fn capture(lab: Option<&Path>, guest: &str, opts: &CaptureOptions) -> Result<u8> {
    require_root("capture")?;
    let (lab, p, i) = running_guest(lab, guest)?;
    let g = &p.guests[i];
    // The vxlan to ping across: the one `--to` is in, or the guest's first.
    let vtep = match opts.to {
        Some(to) => g.vteps.iter().find(|v| v.address.contains(&to)),
        None => g.vteps.first(),
    }
    .with_context(|| match opts.to {
        Some(to) => format!("{to} is in none of {guest}'s vxlans"),
        None => format!("{guest} has no vxlan"),
    })?;
    let to = match opts.to {
        Some(to) => to,
        None => {
            vtep.peers
                .first()
                .with_context(|| format!("{guest} has no peer in {}", vtep.device))?
                .overlay
        }
    };
    let captured = engine(&lab, None)?.capture(&p, g, to, opts.count.max(1), opts.keep)?;
    let (frames, answered) = (captured.frames, captured.answered);
    if let Some(path) = &opts.pcap {
        let mut f = std::fs::File::create(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        packet::write_pcap(&mut f, &frames)?;
    }
    let decoded = decode_capture(&frames, vtep.port);
    if opts.json {
        let packets: Vec<_> = decoded
            .iter()
            .map(|(t, p)| serde_json::json!({"time": t, "packet": p, "summary": p.summary()}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "guest": guest,
                "link": g.host_link,
                "to": to,
                "answered": answered,
                "frames": frames.len(),
                "packets": packets,
            }))?
        );
    } else {
        println!(
            "{guest}'s underlay (host link {}), {} pings to {to} over {} (VNI {}, UDP {}): {}\n",
            g.host_link,
            opts.count,
            vtep.device,
            vtep.vni,
            vtep.port,
            if answered { "answered" } else { "NOT answered" }
        );
        for (i, (t, p)) in decoded.iter().enumerate() {
            println!("{}", packet_line(i, *t, p));
        }
        println!("\n{}", capture_story(&decoded));
        if let Some(path) = &opts.pcap {
            println!(
                "{} frames written to {} (Wireshark decodes UDP {} as VXLAN)",
                frames.len(),
                path.display(),
                vtep.port
            );
        }
    }
    Ok(exit::OK)
}

/// The VXLAN packets (to UDP `port`) among captured frames, each with its time from the
/// first frame in seconds.
pub fn decode_capture(frames: &[crate::packet::Frame], port: u16) -> Vec<(f64, VxlanPacket)> {
    let start = frames.first().map_or(0, |f| f.micros);
    frames
        .iter()
        .filter_map(|f| {
            let t = (f.micros - start) as f64 / 1e6;
            packet::decode(&f.data, port).map(|p| (t, p))
        })
        .collect()
}

/// The `i`th decoded packet (from 0) as `capture` prints it.
pub fn packet_line(i: usize, t: f64, p: &VxlanPacket) -> String {
    format!("{:>3} {t:>8.3}s  {}", i + 1, p.summary())
}

/// What the capture shows, in words: where the flood went and what became unicast.
pub fn capture_story(packets: &[(f64, VxlanPacket)]) -> String {
    let Some((_, first)) = packets.first() else {
        return "no VXLAN packet was captured".into();
    };
    let floods = packets
        .iter()
        .take_while(|(_, p)| p.multicast || matches!(p.inner, packet::Inner::ArpRequest { .. }));
    let flood_copies: Vec<String> = floods.map(|(_, p)| p.outer_dst.to_string()).collect();
    let unicast = packets.iter().filter(|(_, p)| !p.multicast).count();
    format!(
        "the first frame ({}) went {}; in all, {unicast} of {} packets were unicast between \
         the VTEPs' underlay addresses: once a VTEP knows a MAC (learned, or static), frames \
         to it go straight to its VTEP",
        first.inner,
        if first.multicast {
            format!("to the multicast group {}", first.outer_dst)
        } else {
            format!(
                "as {} unicast cop{} (head-end replication: {})",
                flood_copies.len(),
                if flood_copies.len() == 1 { "y" } else { "ies" },
                flood_copies.join(", ")
            )
        },
        packets.len()
    )
}

/// The plan's topology as SVG, drawn by Graphviz's `dot`.
pub(crate) fn svg(p: &Plan) -> Result<Vec<u8>> {
    if crate::host::process::find_program("dot").is_none() {
        return Err(HostError::MissingProgram("dot", "graphviz").into());
    }
    let mut child = std::process::Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(draw::dot(p).as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("dot failed on vxlab's graph");
    }
    Ok(out.stdout)
}

/// `vxlab graph LAB`
pub fn graph(lab: &Path, format: Format, output: Option<&Path>) -> Result<u8> {
    let lab = if lab.is_file() {
        load(lab)?
    } else {
        resolve(Some(lab))?.0
    };
    let p: Plan = plan::plan(&lab);
    let bytes = match format {
        Format::Dot => draw::dot(&p).into_bytes(),
        Format::Mermaid => draw::mermaid(&p).into_bytes(),
        Format::Svg => svg(&p)?,
    };
    match output {
        Some(path) => std::fs::write(path, bytes)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => std::io::stdout().write_all(&bytes)?,
    }
    Ok(exit::OK)
}
