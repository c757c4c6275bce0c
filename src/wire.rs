//! What `vxlab capture` shows a student: which frames `--only` lets through, what it hid, and
//! what the pings did on the wire, in words. Pure: captured frames and the plan in, values out.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use crate::lab::Mac;
use crate::packet::{self, Frame, Inner, VxlanPacket};
use crate::plan::{GuestPlan, Plan, VtepPlan};

/// Which frames a capture shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Only {
    /// The lesson's frames: address resolution and pings inside VXLAN.
    Lesson,
    /// Address resolution inside VXLAN: ARP, and IPv6 neighbour discovery.
    Arp,
    /// Echo requests and replies inside VXLAN.
    Icmp,
    /// Every VXLAN packet, autoconfiguration traffic included.
    Vxlan,
    /// Every frame on the underlay link, VXLAN or not.
    All,
}

/// A frame on the underlay link that is not VXLAN (the VTEPs' own ARP, IGMP, MLD).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnderlayFrame {
    /// Source MAC.
    pub src: Mac,
    /// Destination MAC.
    pub dst: Mac,
    /// What it carries.
    pub inner: Inner,
}

/// One captured frame, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Wire {
    /// A VXLAN packet to the lab's port.
    Vxlan(VxlanPacket),
    /// Anything else on the link.
    Underlay(UnderlayFrame),
    /// Bytes that are not an Ethernet frame vxlab can read.
    Unreadable,
}

impl Wire {
    /// One line for people.
    pub fn summary(&self) -> String {
        match self {
            Wire::Vxlan(p) => p.summary(),
            Wire::Underlay(f) => format!("underlay {} > {}: {}", f.src, f.dst, f.inner),
            Wire::Unreadable => "a frame vxlab cannot decode".into(),
        }
    }

    /// What kind of frame it is, to count what a filter hid ("VXLAN MLD report").
    fn kind(&self) -> String {
        match self {
            Wire::Vxlan(p) => format!("VXLAN {}", p.inner.kind()),
            Wire::Underlay(f) => format!("underlay {}", f.inner.kind()),
            Wire::Unreadable => "unreadable".into(),
        }
    }
}

/// Every frame of a capture, decoded, with its time from the first frame in seconds. `port`
/// is the lab's VXLAN port.
pub fn decode_all(frames: &[Frame], port: u16) -> Vec<(f64, Wire)> {
    let start = frames.first().map_or(0, |f| f.micros);
    frames
        .iter()
        .map(|f| {
            let t = f.micros.saturating_sub(start) as f64 / 1e6;
            let w = match packet::decode(&f.data, port) {
                Some(p) => Wire::Vxlan(p),
                None => match packet::ethernet(&f.data) {
                    Some((src, dst, inner)) => Wire::Underlay(UnderlayFrame { src, dst, inner }),
                    None => Wire::Unreadable,
                },
            };
            (t, w)
        })
        .collect()
}

fn resolves(i: &Inner) -> bool {
    matches!(
        i,
        Inner::ArpRequest { .. } | Inner::ArpReply { .. } | Inner::Neighbour { .. }
    )
}

/// Whether `i` asks for the MAC of `to` (an ARP request, or a neighbour solicitation).
fn asks_for(i: &Inner, to: IpAddr) -> bool {
    match i {
        Inner::ArpRequest { target, .. } => IpAddr::V4(*target) == to,
        Inner::Neighbour {
            solicitation: true,
            target,
        } => IpAddr::V6(*target) == to,
        _ => false,
    }
}

fn pings(i: &Inner) -> bool {
    matches!(i, Inner::Echo { .. })
}

impl Only {
    /// Whether this filter shows `w`.
    pub fn shows(self, w: &Wire) -> bool {
        let inner = match w {
            Wire::Vxlan(p) => Some(&p.inner),
            _ => None,
        };
        match self {
            Only::All => true,
            Only::Vxlan => inner.is_some(),
            Only::Arp => inner.is_some_and(resolves),
            Only::Icmp => inner.is_some_and(pings),
            Only::Lesson => inner.is_some_and(|i| resolves(i) || pings(i)),
        }
    }
}

/// The frames `only` shows, each with its time in seconds from the first of them: frames
/// hidden before it (vxlab's own SSH to the guest, an IGMP report) do not move the lesson's
/// clock, so its first frame is at 0.000 s.
pub fn shown(wire: &[(f64, Wire)], only: Only) -> Vec<(f64, &Wire)> {
    let shown: Vec<&(f64, Wire)> = wire.iter().filter(|(_, w)| only.shows(w)).collect();
    let start = shown.first().map_or(0.0, |(t, _)| *t);
    shown.into_iter().map(|(t, w)| (t - start, w)).collect()
}

/// What `only` hid, by kind, e.g. `{"VXLAN router solicitation": 2, "underlay IGMP": 1}`.
pub fn hidden(wire: &[(f64, Wire)], only: Only) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (_, w) in wire.iter().filter(|(_, w)| !only.shows(w)) {
        *out.entry(w.kind()).or_insert(0) += 1;
    }
    out
}

/// The pings a capture watched.
#[derive(Debug, Clone)]
pub struct Pinged<'a> {
    /// The guest that pinged, on whose underlay the capture ran.
    pub guest: &'a GuestPlan,
    /// The vxlan its pings went into.
    pub vtep: &'a VtepPlan,
    /// The address pinged.
    pub to: IpAddr,
    /// Whether a reply came.
    pub answered: bool,
    /// Whether the guest kept what it had learned (`--keep`).
    pub kept: bool,
    /// Set when `to` is not in the vxlan the pings went into: the isolation lesson.
    pub elsewhere: Option<Elsewhere>,
    /// In the isolation lesson, the guest that has `to`, watched on its own link.
    pub watched: Option<Watched>,
}

/// What the link of the guest that has the address showed while another VNI's guest pinged
/// it: the other half of the isolation lesson.
#[derive(Debug, Clone)]
pub struct Watched {
    /// The guest.
    pub guest: String,
    /// Its underlay address (its VTEP's).
    pub underlay: IpAddr,
    /// Every frame on its link, decoded.
    pub wire: Vec<(f64, Wire)>,
}

/// [`Watched`] from what a capture recorded on guest `name`'s link, decoded with `port`.
pub fn watched(plan: &Plan, seen: Option<&(String, Vec<Frame>)>, port: u16) -> Option<Watched> {
    let (name, frames) = seen?;
    let g = plan.guest(name)?;
    Some(Watched {
        guest: name.clone(),
        underlay: g.underlay.addr(),
        wire: decode_all(frames, port),
    })
}

/// Where an address outside the pinging guest's vxlans lives in the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Elsewhere {
    /// Its VNI, when a vxlan of the lab has it.
    pub vni: Option<u32>,
    /// Who has it, e.g. "vm-c's address on vxlan43".
    pub owner: Option<String>,
}

/// Where `to` lives in the lab, seen from `g`: `None` when one of `g`'s vxlans has it.
pub fn elsewhere(plan: &Plan, g: &GuestPlan, to: IpAddr) -> Option<Elsewhere> {
    if g.vteps.iter().any(|v| v.address.contains(&to)) {
        return None;
    }
    let owned = plan.guests.iter().find_map(|o| {
        o.vteps
            .iter()
            .find(|v| v.address.addr() == to)
            .map(|v| (v.vni, format!("{}'s address on {}", o.name, v.device)))
    });
    let subnet = || {
        plan.guests
            .iter()
            .flat_map(|o| &o.vteps)
            .find(|v| v.address.contains(&to))
            .map(|v| (v.vni, format!("in {}'s overlay", v.device)))
    };
    let (vni, owner) = owned.or_else(subnet).unzip();
    Some(Elsewhere { vni, owner })
}

/// What a capture pings, and across which of the guest's vxlans.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// The vxlan the pings go into.
    pub vtep: &'a VtepPlan,
    /// The address pinged.
    pub to: IpAddr,
    /// Where `to` lives when none of the guest's vxlans has it (the isolation lesson).
    pub elsewhere: Option<Elsewhere>,
}

impl Target<'_> {
    /// The device to send out of when `to` is in none of the guest's vxlans.
    pub fn via(&self) -> Option<&str> {
        self.elsewhere.as_ref().map(|_| self.vtep.device.as_str())
    }
}

/// What guest `g` pings for a capture: `to` across the vxlan that has it; an address in none
/// of its vxlans across its first, sent out of that device anyway (the isolation lesson);
/// without `to`, the first peer of its first vxlan. The one place this is decided, for
/// `vxlab capture` and the class server's Capture button.
pub fn target<'a>(plan: &Plan, g: &'a GuestPlan, to: Option<IpAddr>) -> Result<Target<'a>, String> {
    let elsewhere = to.and_then(|to| elsewhere(plan, g, to));
    let vtep = match to {
        Some(to) if elsewhere.is_none() => g.vteps.iter().find(|v| v.address.contains(&to)),
        _ => g.vteps.first(),
    }
    .ok_or_else(|| format!("{} has no vxlan", g.name))?;
    let to = match to {
        Some(to) => to,
        None => {
            vtep.peers
                .first()
                .ok_or_else(|| format!("{} has no peer in {}", g.name, vtep.device))?
                .overlay
        }
    };
    Ok(Target {
        vtep,
        to,
        elsewhere,
    })
}

/// What the class server's Capture offers guest `g`: each peer's overlay address in each of
/// its vxlans, then each address of the lab's other VNIs (the isolation lesson), with what
/// it is. Only these may be asked for: a page never has a guest ping an address of its
/// choosing.
pub fn targets(plan: &Plan, g: &GuestPlan) -> Vec<(IpAddr, String)> {
    let mut out: Vec<(IpAddr, String)> = Vec::new();
    for v in &g.vteps {
        for p in &v.peers {
            out.push((
                p.overlay,
                format!("{} ({}, VNI {})", p.guest, v.device, v.vni),
            ));
        }
    }
    let mine: Vec<u32> = g.vteps.iter().map(|v| v.vni).collect();
    for o in &plan.guests {
        for v in o.vteps.iter().filter(|v| !mine.contains(&v.vni)) {
            out.push((
                v.address.addr(),
                format!(
                    "{} (VNI {}, another VNI: nothing should cross)",
                    o.name, v.vni
                ),
            ));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|(a, _)| seen.insert(*a));
    out
}

/// The summary of a capture: in words, and the counts it rests on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// What happened, in words.
    pub text: String,
    /// Packets of the pings (ARP or neighbour discovery, and echoes) in the pinged VNI.
    pub packets: usize,
    /// How many of them were unicast between VTEPs.
    pub unicast: usize,
    /// With an address in another VNI: packets the guest's VTEP sent with that VNI.
    pub crossed: Option<usize>,
}

fn copies(n: usize) -> &'static str {
    if n == 1 {
        "copy"
    } else {
        "copies"
    }
}

/// The VXLAN packets among decoded frames, in order.
fn vxlan_packets(wire: &[(f64, Wire)]) -> impl Iterator<Item = &VxlanPacket> {
    wire.iter().filter_map(|(_, w)| match w {
        Wire::Vxlan(x) => Some(x),
        _ => None,
    })
}

/// What the pings did on the wire, from every frame captured (whatever `--only` shows).
pub fn summarize(p: &Pinged, wire: &[(f64, Wire)], owners: &BTreeMap<Mac, String>) -> Summary {
    let me = p.guest.underlay.addr();
    let vni = p.vtep.vni;
    let lesson: Vec<&VxlanPacket> = vxlan_packets(wire)
        .filter(|x| x.vni == vni && (resolves(&x.inner) || pings(&x.inner)))
        .collect();
    let unicast = lesson.iter().filter(|x| !x.multicast).count();
    let answer = if p.answered {
        "the pings were answered"
    } else {
        "the pings were NOT answered"
    };
    if let Some(e) = &p.elsewhere {
        return isolation(p, e, wire, &lesson, unicast);
    }
    let Some(first) = lesson.first() else {
        return Summary {
            text: format!(
                "{answer}, and no ARP or ICMP packet of VNI {vni} crossed {}'s underlay: the \
                 pings never left its VTEP",
                p.guest.name
            ),
            packets: 0,
            unicast: 0,
            crossed: None,
        };
    };
    let same: Vec<&&VxlanPacket> = lesson
        .iter()
        .filter(|x| {
            x.outer_src == first.outer_src
                && x.inner_src == first.inner_src
                && x.inner_dst == first.inner_dst
                && x.inner == first.inner
        })
        .collect();
    let owner = |m: Mac| {
        owners
            .get(&m)
            .map_or_else(|| m.to_string(), |g| format!("{m} ({g})"))
    };
    let sender = if first.outer_src == me {
        format!("{}'s VTEP", p.guest.name)
    } else {
        format!("VTEP {}", first.outer_src)
    };
    let went = if first.multicast {
        format!(
            "went to the multicast group {}: one packet, which every VTEP that joined the group \
             receives",
            first.outer_dst
        )
    } else if first.inner_dst.is_multicast() {
        let mut dsts: Vec<IpAddr> = same.iter().map(|x| x.outer_dst).collect();
        dsts.sort();
        let dsts: Vec<String> = dsts.iter().map(IpAddr::to_string).collect();
        format!(
            "went as {} unicast {}, one per peer VTEP (head-end replication: {})",
            same.len(),
            copies(same.len()),
            dsts.join(", ")
        )
    } else {
        let why = if p.vtep.static_fdb {
            "from the static entry vxlab wrote"
        } else if p.kept {
            "it had learned it, and --keep kept it"
        } else {
            "it had learned it"
        };
        format!(
            "went unicast straight to VTEP {}: {sender} already knew which VTEP {} is behind \
             ({why}), so nothing was flooded",
            first.outer_dst,
            owner(first.inner_dst)
        )
    };
    let rule = if !p.vtep.learning {
        "learning is off, so the VTEPs learn nothing: frames to a known MAC go by the static \
         entries vxlab wrote"
    } else {
        "once a VTEP knows a MAC (learned, or static), frames to it go straight to its VTEP"
    };
    Summary {
        text: format!(
            "{answer}. The first frame ({}) {went}; in all, {unicast} of the {} packets \
             of the pings were unicast between the VTEPs' underlay addresses: {rule}",
            first.inner,
            lesson.len()
        ),
        packets: lesson.len(),
        unicast,
        crossed: None,
    }
}

/// The isolation lesson: the pings went into the guest's own VNI, and nothing crossed to the
/// VNI that has the address.
fn isolation(
    p: &Pinged,
    e: &Elsewhere,
    wire: &[(f64, Wire)],
    lesson: &[&VxlanPacket],
    unicast: usize,
) -> Summary {
    let me = p.guest.underlay.addr();
    let (g, v) = (&p.guest.name, p.vtep);
    let in_vni = |x: &VxlanPacket| e.vni == Some(x.vni);
    let vxlan = || vxlan_packets(wire);
    let crossed = vxlan().filter(|x| in_vni(x) && x.outer_src == me).count();
    let passing = vxlan().filter(|x| in_vni(x) && x.outer_src != me).count();
    let whose = match (&e.owner, e.vni) {
        (Some(o), Some(vni)) => format!("{} is {o} (VNI {vni})", p.to),
        _ => format!("{} is in none of the lab's overlays", p.to),
    };
    let asked: Vec<&&VxlanPacket> = lesson
        .iter()
        .filter(|x| x.outer_src == me && asks_for(&x.inner, p.to))
        .collect();
    let went = if asked.is_empty() {
        "none of them left it".to_string()
    } else if asked.iter().all(|x| x.multicast) {
        format!("flooded to the group {}", asked[0].outer_dst)
    } else {
        let mut dsts: Vec<IpAddr> = asked.iter().map(|x| x.outer_dst).collect();
        dsts.sort();
        dsts.dedup();
        let dsts: Vec<String> = dsts.iter().map(IpAddr::to_string).collect();
        format!("flooded as a copy to each peer VTEP ({})", dsts.join(", "))
    };
    let mut text = format!(
        "{whose}, and {g} has no VTEP there: its pings went into its own {} (VNI {}), where \
         it asked who has {} {} time{}, {went}; {}. ",
        v.device,
        v.vni,
        p.to,
        asked.len(),
        if asked.len() == 1 { "" } else { "s" },
        if p.answered {
            "something in that VNI answered"
        } else {
            "nothing answered"
        }
    );
    match e.vni {
        Some(vni) if crossed == 0 => {
            text.push_str(&format!(
                "Nothing crossed to VNI {vni}: 0 packets from {g}'s VTEP carried VNI {vni}. A \
                 VTEP delivers a frame only to the VTEPs of its own VNI."
            ));
            if passing > 0 {
                text.push_str(&format!(
                    " ({passing} packets of VNI {vni} between other guests passed {g}'s \
                     underlay link; its kernel drops them, having no VTEP for VNI {vni}.)"
                ));
            }
        }
        Some(vni) => text.push_str(&format!(
            "Something crossed to VNI {vni}: {crossed} packet{} from {g}'s VTEP carried VNI \
             {vni}, which none of {g}'s vxlans has. Isolation is broken: look for a vxlan \
             device in {g} that the lab does not plan (`vxlab check`).",
            if crossed == 1 { "" } else { "s" }
        )),
        None => text.push_str("No VTEP of the lab has that address."),
    }
    if let (Some(w), Some(vni)) = (&p.watched, e.vni) {
        text.push_str(&watched_words(w, me, g, v.vni, vni, v.device.as_str()));
    }
    Summary {
        text,
        packets: lesson.len(),
        unicast,
        crossed: e.vni.map(|_| crossed),
    }
}

/// The isolation lesson seen from the other side: on the link of `w`, the guest that has the
/// address in VNI `theirs`, what of `g`'s VNI `mine` arrived, and what its VTEP sent back.
fn watched_words(w: &Watched, me: IpAddr, g: &str, mine: u32, theirs: u32, dev: &str) -> String {
    let packets = || vxlan_packets(&w.wire);
    let arrived = packets()
        .filter(|x| x.outer_src == me && x.vni == mine)
        .count();
    let back = packets()
        .filter(|x| x.outer_src == w.underlay && (x.vni == mine || x.outer_dst == me))
        .count();
    let reach = if arrived == 0 {
        format!(
            "none of {g}'s VNI {mine} packets reached it (the bridge delivers a group only to \
             the ports that joined it)"
        )
    } else {
        format!(
            "{arrived} of {g}'s VNI {mine} packet{} reached it, flooded, and its kernel \
             dropped {}: it has no VTEP in VNI {mine}",
            if arrived == 1 { "" } else { "s" },
            if arrived == 1 { "it" } else { "them" }
        )
    };
    let answer = if back == 0 {
        format!("its VTEP sent nothing back to {g} or into VNI {mine}")
    } else {
        format!(
            "its VTEP sent {back} packet{} back to {g} or into VNI {mine}: isolation is broken",
            if back == 1 { "" } else { "s" }
        )
    };
    format!(
        " On {}'s own underlay link, watched meanwhile (its VNI {theirs} VTEP): {reach}; \
         {answer}. The pings out of {dev} had no way into VNI {theirs}.",
        w.guest
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::owners;

    fn plan_of(file: &str) -> Plan {
        let path = format!("{}/labs/{file}", env!("CARGO_MANIFEST_DIR"));
        crate::plan::plan(&crate::lab::load(std::path::Path::new(&path)).unwrap())
    }

    const BROADCAST: Mac = Mac([0xff; 6]);

    /// A VXLAN packet of `v`'s VNI from `src` to `dst` carrying `inner`.
    fn vx(v: &VtepPlan, src: &str, dst: &str, macs: (Mac, Mac), inner: Inner) -> (f64, Wire) {
        let dst: IpAddr = dst.parse().unwrap();
        (
            0.0,
            Wire::Vxlan(VxlanPacket {
                outer_src: src.parse().unwrap(),
                outer_dst: dst,
                multicast: dst.is_multicast(),
                udp_src: 40000,
                udp_dst: 4789,
                vni: v.vni,
                inner_src: macs.0,
                inner_dst: macs.1,
                inner,
            }),
        )
    }

    fn arp() -> Inner {
        Inner::ArpRequest {
            sender: "192.168.42.2".parse().unwrap(),
            target: "192.168.42.3".parse().unwrap(),
        }
    }

    fn echo(request: bool, seq: u16) -> Inner {
        let (a, b) = (
            "192.168.42.2".parse().unwrap(),
            "192.168.42.3".parse().unwrap(),
        );
        let (src, dst) = if request { (a, b) } else { (b, a) };
        Inner::Echo {
            request,
            src,
            dst,
            seq,
        }
    }

    fn pinged<'a>(g: &'a GuestPlan, kept: bool) -> Pinged<'a> {
        Pinged {
            guest: g,
            vtep: &g.vteps[0],
            to: g.vteps[0].peers[0].overlay,
            answered: true,
            kept,
            elsewhere: None,
            watched: None,
        }
    }

    #[test]
    fn the_lessons_clock_starts_at_its_first_shown_frame() {
        let plan = plan_of("two-netns.yaml");
        let v = &plan.guests[0].vteps[0];
        let (a, b) = (v.mac, v.peers[0].mac);
        let at = |t: f64, (_, w): (f64, Wire)| (t, w);
        // vxlab's own SSH to the guest came first, hidden; then the ARP and an echo.
        let all = vec![
            (0.0, Wire::Unreadable),
            (0.050, Wire::Unreadable),
            at(
                0.126,
                vx(v, "192.168.10.2", "239.1.1.1", (a, BROADCAST), arp()),
            ),
            at(
                0.135,
                vx(v, "192.168.10.2", "192.168.10.3", (a, b), echo(true, 1)),
            ),
        ];
        let shown = shown(&all, Only::Lesson);
        let times: Vec<String> = shown.iter().map(|(t, _)| format!("{t:.3}")).collect();
        assert_eq!(times, ["0.000", "0.009"]);
        assert!(matches!(shown[0].1, Wire::Vxlan(p) if p.multicast));
        // Shown in full, the clock is the capture's own.
        let every = super::shown(&all, Only::All);
        assert_eq!(every.len(), 4);
        assert_eq!(format!("{:.3}", every[2].0), "0.126");
    }

    #[test]
    fn the_default_shows_arp_and_icmp_in_vxlan_and_counts_the_rest() {
        let plan = plan_of("two-netns.yaml");
        let v = &plan.guests[0].vteps[0];
        let (a, b) = (v.mac, v.peers[0].mac);
        let rs = Inner::Icmpv6 {
            src: "fe80::1".parse().unwrap(),
            dst: "ff02::2".parse().unwrap(),
            icmp_type: 133,
        };
        let igmp = Inner::Ip {
            src: "192.168.10.2".parse().unwrap(),
            dst: "224.0.0.22".parse().unwrap(),
            protocol: 2,
        };
        let wire = vec![
            vx(v, "192.168.10.2", "239.1.1.1", (a, BROADCAST), arp()),
            vx(
                v,
                "192.168.10.2",
                "239.1.1.1",
                (a, Mac([0x33, 0x33, 0, 0, 0, 2])),
                rs,
            ),
            (
                0.0,
                Wire::Underlay(UnderlayFrame {
                    src: a,
                    dst: BROADCAST,
                    inner: igmp,
                }),
            ),
            vx(v, "192.168.10.2", "192.168.10.3", (a, b), echo(true, 1)),
        ];
        let shown: Vec<_> = wire.iter().filter(|(_, w)| Only::Lesson.shows(w)).collect();
        assert_eq!(shown.len(), 2);
        assert_eq!(
            hidden(&wire, Only::Lesson),
            BTreeMap::from([
                ("VXLAN router solicitation".to_string(), 1),
                ("underlay IGMP".to_string(), 1)
            ])
        );
        assert_eq!(hidden(&wire, Only::All), BTreeMap::new());
        assert_eq!(wire.iter().filter(|(_, w)| Only::Arp.shows(w)).count(), 1);
        assert_eq!(wire.iter().filter(|(_, w)| Only::Icmp.shows(w)).count(), 1);
        assert_eq!(wire.iter().filter(|(_, w)| Only::Vxlan.shows(w)).count(), 3);
    }

    #[test]
    fn the_flood_goes_to_the_group_and_the_rest_is_unicast() {
        let plan = plan_of("two-netns.yaml");
        let g = &plan.guests[0];
        let v = &g.vteps[0];
        let (a, b) = (v.mac, v.peers[0].mac);
        let wire = vec![
            vx(v, "192.168.10.2", "239.1.1.1", (a, BROADCAST), arp()),
            vx(v, "192.168.10.3", "192.168.10.2", (b, a), arp()),
            vx(v, "192.168.10.2", "192.168.10.3", (a, b), echo(true, 1)),
            vx(v, "192.168.10.3", "192.168.10.2", (b, a), echo(false, 1)),
        ];
        let s = summarize(&pinged(g, false), &wire, &owners(&plan));
        assert!(
            s.text
                .contains("went to the multicast group 239.1.1.1: one packet"),
            "{}",
            s.text
        );
        assert!(s.text.contains("3 of the 4 packets"), "{}", s.text);
        assert_eq!((s.packets, s.unicast), (4, 3));
    }

    #[test]
    fn with_keep_the_first_echo_goes_straight_to_the_peer() {
        let plan = plan_of("two-netns.yaml");
        let g = &plan.guests[1];
        let v = &g.vteps[0];
        let (b, a) = (v.mac, v.peers[0].mac);
        let wire = vec![
            vx(v, "192.168.10.3", "192.168.10.2", (b, a), echo(true, 1)),
            vx(v, "192.168.10.2", "192.168.10.3", (a, b), echo(false, 1)),
        ];
        let s = summarize(&pinged(g, true), &wire, &owners(&plan));
        assert!(
            s.text.contains(
                "went unicast straight to VTEP 192.168.10.2: vm-b's VTEP already knew which \
                 VTEP 02:"
            ) && s
                .text
                .contains("(vm-a) is behind (it had learned it, and --keep kept it)"),
            "{}",
            s.text
        );
        assert!(s.text.contains("2 of the 2 packets"), "{}", s.text);
        assert!(!s.text.contains("head-end"), "{}", s.text);
    }

    #[test]
    fn head_end_replication_counts_one_copy_per_peer() {
        let plan = plan_of("unicast.yaml");
        let g = &plan.guests[0];
        let v = &g.vteps[0];
        let wire = vec![
            vx(v, "192.168.30.2", "192.168.30.3", (v.mac, BROADCAST), arp()),
            vx(v, "192.168.30.2", "192.168.30.4", (v.mac, BROADCAST), arp()),
        ];
        let s = summarize(&pinged(g, false), &wire, &owners(&plan));
        assert!(
            s.text.contains(
                "went as 2 unicast copies, one per peer VTEP (head-end replication: \
                 192.168.30.3, 192.168.30.4)"
            ),
            "{}",
            s.text
        );
    }

    #[test]
    fn nothing_captured_says_so() {
        let plan = plan_of("two-netns.yaml");
        let g = &plan.guests[0];
        let mut p = pinged(g, false);
        p.answered = false;
        let s = summarize(&p, &[], &owners(&plan));
        assert_eq!(s.packets, 0);
        assert!(
            s.text
                .starts_with("the pings were NOT answered, and no ARP"),
            "{}",
            s.text
        );
    }

    #[test]
    fn an_address_in_another_vni_is_isolation_with_nothing_crossing() {
        let plan = plan_of("two-vni.yaml");
        let g = &plan.guests[0];
        let to: IpAddr = "192.168.43.3".parse().unwrap();
        let e = elsewhere(&plan, g, to).unwrap();
        assert_eq!(e.vni, Some(43));
        assert_eq!(e.owner.as_deref(), Some("vm-c's address on vxlan43"));
        let v = &g.vteps[0];
        let who_has = Inner::ArpRequest {
            sender: "192.168.42.2".parse().unwrap(),
            target: "192.168.43.3".parse().unwrap(),
        };
        let wire = vec![vx(
            v,
            "192.168.20.2",
            "239.1.1.42",
            (v.mac, BROADCAST),
            who_has,
        )];
        let p = Pinged {
            guest: g,
            vtep: v,
            to,
            answered: false,
            kept: false,
            elsewhere: Some(e),
            watched: None,
        };
        let s = summarize(&p, &wire, &owners(&plan));
        assert_eq!(s.crossed, Some(0));
        // Watched on vm-c's link: the flood did not reach it (vm-c joined 239.1.1.43 only),
        // and it sent nothing; or it did reach it, and still nothing came back.
        let vm_c = plan.guest("vm-c").unwrap();
        let mut seen = p.clone();
        seen.watched = Some(Watched {
            guest: "vm-c".into(),
            underlay: vm_c.underlay.addr(),
            wire: Vec::new(),
        });
        let text = summarize(&seen, &wire, &owners(&plan)).text;
        assert!(
            text.contains(
                "On vm-c's own underlay link, watched meanwhile (its VNI 43 VTEP): none of \
                 vm-a's VNI 42 packets reached it"
            ) && text.contains("its VTEP sent nothing back to vm-a or into VNI 42"),
            "{text}"
        );
        seen.watched.as_mut().unwrap().wire = wire.clone();
        let text = summarize(&seen, &wire, &owners(&plan)).text;
        assert!(
            text.contains(
                "1 of vm-a's VNI 42 packet reached it, flooded, and its kernel dropped it"
            ),
            "{text}"
        );
        assert!(
            s.text.starts_with(
                "192.168.43.3 is vm-c's address on vxlan43 (VNI 43), and vm-a has no VTEP \
                 there: its pings went into its own vxlan42 (VNI 42), where it asked who has \
                 192.168.43.3 1 time, flooded to the group 239.1.1.42; nothing answered"
            ),
            "{}",
            s.text
        );
        assert!(
            s.text.contains("Nothing crossed to VNI 43: 0 packets"),
            "{}",
            s.text
        );
        // A vxlan of VNI 43 that a student added in vm-a: its frames do cross, and the
        // summary says so instead of "nothing crossed".
        let mut rogue = vx(
            v,
            "192.168.20.2",
            "239.1.1.43",
            (v.mac, BROADCAST),
            Inner::ArpRequest {
                sender: "192.168.43.9".parse().unwrap(),
                target: "192.168.43.3".parse().unwrap(),
            },
        );
        if let Wire::Vxlan(x) = &mut rogue.1 {
            x.vni = 43;
        }
        let s = summarize(&p, &[wire[0].clone(), rogue], &owners(&plan));
        assert_eq!(s.crossed, Some(1));
        assert!(!s.text.contains("Nothing crossed"), "{}", s.text);
        assert!(
            s.text
                .contains("Something crossed to VNI 43: 1 packet from vm-a's VTEP carried VNI 43"),
            "{}",
            s.text
        );
        assert_eq!(elsewhere(&plan, g, "192.168.42.3".parse().unwrap()), None);
    }
}
