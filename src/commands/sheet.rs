//! `vxlab sheet LAB`: the access sheet, one card per running copy of a lab: its name, its
//! secret link to the class server, its guests with their addresses, and what to try first.

use std::path::Path;

use anyhow::{bail, Result};
use serde::Serialize;

use super::{exit, load, resolve};
use crate::lab::Flood;
use crate::plan::{self, Plan};
use crate::state::StateDir;
use crate::web::pages::{self, GuestSummary};
use crate::web::tokens::Tokens;

/// Formats of the sheet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SheetFormat {
    /// Cards as plain text.
    Text,
    /// `instance,lab,url,guests` with a header row, for mail merge.
    Csv,
    /// A printable page, one card per student.
    Html,
}

/// One student's card.
#[derive(Debug, Serialize)]
struct Card {
    /// The copy's instance name (`7` of `two-netns-7`); the lab's name for a lab that is no
    /// copy.
    instance: String,
    /// The copy's lab name.
    lab: String,
    /// The lab it copies (itself, for a lab that is no copy).
    base: String,
    /// Its secret link.
    url: String,
    /// Its guests.
    guests: Vec<GuestSummary>,
    /// What to try first, one step per line.
    try_first: Vec<String>,
}

/// Where the links point when no server runs and `--url` says nothing: `vxlab serve`'s
/// default address.
const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Whether `url` is `http://HOST[:PORT]` or `https://HOST[:PORT]`: the address of a class
/// server, whose pages are at its root.
fn is_server_address(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

/// `vxlab sheet LAB [--format text|csv|html] [--url BASE]`: the links point to `base_url`,
/// else to the class server running for these labs, else to `serve`'s default address.
pub fn sheet(arg: &Path, format: SheetFormat, base_url: Option<&str>) -> Result<u8> {
    let state = StateDir::from_env();
    let base_url = match base_url {
        Some(u) => u.to_string(),
        None => super::serve::running_server(&state).unwrap_or_else(|| {
            eprintln!(
                "no class server is running for the labs in {}: the links assume \
                 `vxlab serve`'s default, {DEFAULT_URL}; `--url` sets another",
                state.root().display()
            );
            DEFAULT_URL.to_string()
        }),
    };
    let base_url = base_url.trim_end_matches('/');
    if !is_server_address(base_url) {
        bail!(
            "--url takes the server's address as the students reach it, scheme, host and \
             port only, e.g. http://10.0.0.5:8080 (the pages live at the server's root: no \
             path, query or fragment)"
        );
    }
    let base = if arg.is_file() {
        load(arg)?.name
    } else {
        arg.to_string_lossy().into_owned()
    };
    // The copies of `base`; `base` itself only when no copy runs and it runs as a lab of its
    // own (one student's lab). An instructor's own run of the lab beside the copies is no
    // student's.
    let running = state.labs();
    let copies: Vec<String> = running
        .iter()
        .filter(|l| {
            state
                .read(l)
                .ok()
                .and_then(|s| s.instance)
                .is_some_and(|i| i.base == base)
        })
        .cloned()
        .collect();
    let labs = if copies.is_empty() && running.contains(&base) {
        vec![base.clone()]
    } else {
        copies
    };
    if labs.is_empty() {
        return Err(super::NotFound(format!(
            "no copy of lab {base} is running in {}; `vxlab up LAB --count N` starts them",
            state.root().display()
        ))
        .into());
    }
    let tokens = Tokens::load(&state, &labs)?;
    let mut cards = Vec::new();
    for name in &labs {
        let (lab, _) = resolve(Some(Path::new(name)))?;
        let p = plan::plan(&lab);
        let token = tokens.lab(name).expect("a token per lab");
        cards.push(Card {
            instance: lab
                .instance
                .as_ref()
                .map_or_else(|| name.clone(), |i| i.name.clone()),
            lab: name.clone(),
            base: lab
                .instance
                .as_ref()
                .map_or_else(|| name.clone(), |i| i.base.clone()),
            url: format!("{base_url}/t/{token}/lab/{name}/"),
            guests: p.guests.iter().map(GuestSummary::of).collect(),
            try_first: try_first(&p),
        });
    }
    match format {
        SheetFormat::Text => print!("{}", text(&cards)),
        SheetFormat::Csv => print!("{}", csv(&cards)),
        SheetFormat::Html => print!(
            "{}",
            pages::render(
                "sheet.html",
                &serde_json::json!({"lab": base, "cards": cards})
            )
        ),
    }
    Ok(exit::OK)
}

/// The first things to do in the lab: ping across the overlay and watch the FDB learn.
fn try_first(p: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    let Some((g, v)) = p
        .guests
        .iter()
        .find_map(|g| g.vteps.first().map(|v| (g, v)))
    else {
        return out;
    };
    out.push(format!(
        "Open your link: each guest has a terminal (the prompt is `{}/{}#`) and its tables below it.",
        p.lab, g.name
    ));
    if let Some(peer) = v.peers.first() {
        if v.static_fdb || !v.learning {
            out.push(format!(
                "{}'s FDB table already holds {}'s MAC {} with dst {}: the lab put it there \
                 (learning is {}). In {}'s terminal: `ping -c 1 {}` crosses using it.",
                g.name,
                peer.guest,
                peer.mac,
                peer.underlay,
                if v.learning { "on" } else { "off" },
                g.name,
                peer.overlay
            ));
        } else {
            // vxlab's own checks pinged across when the lab came up: Reset forgets that.
            out.push(format!(
                "Press Reset for {}: it forgets what vxlab's checks taught it, and its FDB table \
                 keeps only the flood entries.",
                g.name
            ));
            out.push(format!(
                "In {}'s terminal: `ping -c 1 {}`. Watch {}'s FDB table: {}'s MAC {} appears \
                 with dst {}, learned from the first reply.",
                g.name, peer.overlay, g.name, peer.guest, peer.mac, peer.underlay
            ));
        }
    }
    if let Flood::Group(group) = v.flood {
        out.push(format!(
            "`ip maddr show dev {}`: the group {group} joined on the underlay, because {} floods to it.",
            v.dev, v.device
        ));
    }
    out.push(format!(
        "Break it (`ip link set {} down`), press Check to see the cause and its fix, then Reset {}.",
        v.device, g.name
    ));
    out
}

fn text(cards: &[Card]) -> String {
    let mut o = String::new();
    for c in cards {
        let of = if c.base == c.lab {
            String::new()
        } else {
            format!(" (a copy of {})", c.base)
        };
        o.push_str(&format!("== {}{of}\n   {}\n", c.lab, c.url));
        for g in &c.guests {
            o.push_str(&format!(
                "   {:<8} underlay {:<18} {}\n",
                g.name,
                g.underlay,
                g.overlays.join("; ")
            ));
        }
        o.push_str("   try first:\n");
        for (i, t) in c.try_first.iter().enumerate() {
            o.push_str(&format!("   {}. {t}\n", i + 1));
        }
        o.push('\n');
    }
    o
}

/// RFC 4180: a field with a comma, quote or line break is quoted, quotes doubled.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv(cards: &[Card]) -> String {
    let mut o = String::from("instance,lab,url,guests\n");
    for c in cards {
        let guests: Vec<String> = c
            .guests
            .iter()
            .map(|g| format!("{} {} {}", g.name, g.underlay, g.overlays.join(" ")))
            .collect();
        // The copy's instance and its lab name, the name its student types in commands.
        let row = [&c.instance, &c.lab, &c.url, &guests.join("; ")].map(|f| csv_field(f));
        o.push_str(&row.join(","));
        o.push('\n');
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_address_is_scheme_host_and_port_only() {
        for ok in [
            "http://10.0.0.5:8080",
            "https://class.example",
            "http://[fd00::1]:80",
        ] {
            assert!(is_server_address(ok), "{ok}");
        }
        for bad in [
            "http://x:8080/?a=b",
            "http://x:8080/#frag",
            "https://x/base",
            "ftp://x",
            "http://",
            "http://x y",
        ] {
            assert!(!is_server_address(bad), "{bad}");
        }
    }

    #[test]
    fn csv_fields_with_commas_and_quotes_are_quoted() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn the_seed_lab_says_to_ping_and_watch_the_fdb_learn_the_peer() {
        let lab = crate::lab::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/labs/two-netns.yaml"
        )))
        .unwrap();
        let steps = try_first(&plan::plan(&lab)).join("\n");
        assert!(steps.contains("`ping -c 1 192.168.42.3`"), "{steps}");
        assert!(steps.contains("with dst 192.168.10.3"), "{steps}");
        assert!(steps.contains("group 239.1.1.1 joined"), "{steps}");
    }
}
