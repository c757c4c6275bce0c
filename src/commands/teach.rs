//! The teaching commands: `show`, `walk`, `capture`, `graph`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{
    engine, exit, image_for, load_with_text, recipe, require_programs, require_root, running_guest,
    HostError,
};
use crate::graph::Format;
use crate::packet;
use crate::plan::{self, Plan};
use crate::progress::Progress;
use crate::views::Section;
use crate::wire::{self, Only, Wire};
use crate::{explain, graph as draw, report, views};

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
    let (lab, text) = load_with_text(path)?;
    require_root("walk")?;
    if crate::state::StateDir::from_env().read(&lab.name).is_ok() {
        return Err(super::Usage(format!(
            "lab {0} is running; `vxlab down {0}` first, so the walk starts from nothing \
             (nothing was changed)",
            lab.name
        ))
        .into());
    }
    crate::interrupt::install();
    require_programs(lab.driver)?;
    let image = image_for(&lab)?;
    let p = plan::plan(&lab);
    let pause = !no_pause && std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    println!(
        "walking lab {}: {} guests, built one kind of step at a time{}\n{}",
        lab.name,
        p.guests.len(),
        if pause { " (Enter goes on)" } else { "" },
        views::walk_reads(&p)
    );
    let mut show = |stage: &crate::outcome::Stage| {
        print!("{}", views::walk_stage(&p, stage));
        let _ = std::io::stdout().flush();
        if pause {
            print!("[Enter] ");
            let _ = std::io::stdout().flush();
            // Ctrl-C here stops the walk before the next stage: nothing is in flight.
            if !crate::interrupt::wait_for_enter() {
                println!();
            }
        }
    };
    let o = engine(&lab, image)?
        .with_recipe(recipe(&lab, path)?)
        .walk(&p, path, &text, &Progress::new(), &mut show)
        .with_context(|| {
            format!(
                "while walking lab {0}; `vxlab up {0}` finishes it, `vxlab down {0}` removes \
                 what was built",
                lab.name
            )
        })?;
    println!("{}", views::walk_checks(&p));
    print!("{}", report::build(&p, &o).human());
    println!(
        "\nthe lab stays up: `vxlab show --lab {0} GUEST`, `vxlab capture --lab {0} GUEST`, \
         `vxlab down {0}`",
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
    /// Which frames to show.
    pub only: Only,
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
    let target = wire::target(&p, g, opts.to).map_err(anyhow::Error::msg)?;
    let (vtep, to) = (target.vtep, target.to);
    let captured =
        engine(&lab, None)?.capture(&p, g, (to, target.via()), opts.count.max(1), opts.keep)?;
    let frames = &captured.frames;
    if let Some(path) = &opts.pcap {
        let mut pcap = Vec::new();
        packet::write_pcap(&mut pcap, frames)?;
        // Never through a symlink someone planted at the path.
        crate::host::files::write_replacing(path, &pcap, crate::host::files::SHARED)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let all = wire::decode_all(frames, vtep.port);
    let shown = wire::shown(&all, opts.only);
    let hidden = wire::hidden(&all, opts.only);
    // Pings that should have been answered and were not fail the command, as `ping` does;
    // into another VNI (the isolation lesson) no answer is the lesson.
    let outcome = if captured.answered || target.elsewhere.is_some() {
        exit::OK
    } else {
        exit::CHECK_FAILED
    };
    let pinged = wire::Pinged {
        guest: g,
        vtep,
        to,
        answered: captured.answered,
        kept: opts.keep,
        elsewhere: target.elsewhere.clone(),
        watched: wire::watched(&p, captured.watched.as_ref(), vtep.port),
    };
    let summary = wire::summarize(&pinged, &all, &explain::owners(&p));
    if opts.json {
        let packets: Vec<_> = shown
            .iter()
            .map(|(t, w)| {
                let mut v = serde_json::json!({"time": t, "summary": w.summary()});
                match w {
                    Wire::Vxlan(x) => v["packet"] = serde_json::to_value(x)?,
                    Wire::Underlay(f) => v["frame"] = serde_json::to_value(f)?,
                    Wire::Unreadable => {}
                }
                Ok(v)
            })
            .collect::<Result<_>>()?;
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "guest": guest,
                "link": g.host_link,
                "to": to,
                "vni": vtep.vni,
                "answered": captured.answered,
                "ping": captured.ping,
                "forgot": captured.forgot.iter().map(|(who, s)| serde_json::json!({"guest": who, "command": s.command.to_string()})).collect::<Vec<_>>(),
                "only": opts.only,
                "frames": frames.len(),
                "packets": packets,
                "hidden": hidden,
                "summary": summary,
            }))?
        );
        return Ok(outcome);
    }
    println!(
        "{guest}'s underlay (host link {}), {} ping{} to {to} over {} (VNI {}, UDP {}): {}",
        g.host_link,
        opts.count,
        if opts.count == 1 { "" } else { "s" },
        vtep.device,
        vtep.vni,
        vtep.port,
        if captured.answered {
            "answered"
        } else {
            "NOT answered"
        }
    );
    if !captured.forgot.is_empty() {
        println!("first both ends forget what they learned, so the capture starts from nothing (--keep does not):");
        for (who, s) in &captured.forgot {
            println!("  {who}$ {}", s.command);
        }
    }
    println!("{guest} pings:\n  $ {}\n", captured.ping);
    for (i, (t, w)) in shown.iter().enumerate() {
        println!("{:>3} {t:>8.3}s  {}", i + 1, w.summary());
    }
    if shown.is_empty() {
        println!("  (no frame {})", only_words(opts.only));
    }
    if !hidden.is_empty() {
        let parts: Vec<String> = hidden.iter().map(|(k, n)| format!("{k} x{n}")).collect();
        println!(
            "\nhidden: {} (`--only all` shows every frame)",
            parts.join(", ")
        );
    }
    println!("\n{}", summary.text);
    if let Some(path) = &opts.pcap {
        println!(
            "{} frames written to {} (Wireshark decodes UDP {} as VXLAN)",
            frames.len(),
            path.display(),
            vtep.port
        );
    }
    Ok(outcome)
}

/// What a filter shows, for "no frame ..." lines.
fn only_words(only: Only) -> &'static str {
    match only {
        Only::Lesson => "of ARP or ICMP inside VXLAN",
        Only::Arp => "of ARP or neighbour discovery inside VXLAN",
        Only::Icmp => "of ICMP echo inside VXLAN",
        Only::Vxlan => "of VXLAN",
        Only::All => "at all",
    }
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
    let lab = super::file_or_running(lab)?;
    let p: Plan = plan::plan(&lab);
    let bytes = match format {
        Format::Dot => draw::dot(&p).into_bytes(),
        Format::Mermaid => draw::mermaid(&p).into_bytes(),
        Format::Svg => svg(&p)?,
    };
    match output {
        Some(path) => crate::host::files::write_replacing(path, &bytes, crate::host::files::SHARED)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => std::io::stdout().write_all(&bytes)?,
    }
    Ok(exit::OK)
}
