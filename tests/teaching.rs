//! The teaching views on real namespaces: what `capture` sees on the wire, what `show` and
//! `walk` print, the topology `graph` draws, 30 copies of the seed lab side by side.
//! Needs root; `graph` SVG needs graphviz.

mod common;

use std::process::Command;

use common::{guest, vtep, Lab};
use serde_json::Value;

fn vxlab(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vxlab"))
        .args(args)
        .output()
        .unwrap()
}

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "not JSON (exit {:?}): {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn capture_sees_the_first_arp_go_to_the_group_and_the_rest_unicast() {
    let lab = Lab::shipped("two-netns.yaml", "t-cap", &[("192.168.10.", "192.168.46.")]);
    let (code, _) = lab.up();
    assert_eq!(code, 0);
    let pcap = lab.state.path().join("../t-cap.pcap");
    let out = lab.run(&[
        "capture",
        "--lab",
        "t-cap",
        "vm-a",
        "--json",
        "--pcap",
        pcap.to_str().unwrap(),
    ]);
    let c = json_of(&out);
    assert_eq!(c["answered"], true);
    // Both ends forgot first, the guest pinged before the pinging one: else a probe of vm-b's
    // could teach vm-a again before its ping.
    let who: Vec<&str> = c["forgot"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["guest"].as_str().unwrap())
        .collect();
    assert!(
        who.first() == Some(&"vm-b") && who.last() == Some(&"vm-a"),
        "{c:#}"
    );
    let packets = c["packets"].as_array().unwrap();
    let first = &packets[0]["packet"];
    // The seed's observation: the ARP request is flooded to the group...
    assert_eq!(first["outer_dst"], "239.1.1.1", "{c:#}");
    assert_eq!(first["multicast"], true);
    assert_eq!(first["outer_src"], "192.168.46.2");
    assert_eq!(first["inner"]["kind"], "arp_request");
    assert_eq!(first["inner"]["target"], "192.168.42.3");
    // ... the reply and every echo after it are unicast between the VTEPs.
    let reply = packets
        .iter()
        .map(|p| &p["packet"])
        .find(|p| p["inner"]["kind"] == "arp_reply")
        .expect("an ARP reply");
    assert_eq!(reply["multicast"], false);
    assert_eq!(reply["outer_dst"], "192.168.46.2");
    let echoes: Vec<&Value> = packets
        .iter()
        .map(|p| &p["packet"])
        .filter(|p| p["inner"]["kind"] == "echo")
        .collect();
    assert_eq!(echoes.len(), 6, "3 requests and 3 replies: {c:#}");
    assert!(echoes.iter().all(|p| p["multicast"] == false));
    assert!(packets.iter().all(|p| p["packet"]["vni"] == 42));
    assert!(packets.iter().all(|p| p["packet"]["udp_dst"] == 4789));
    // The lesson's clock starts at its first frame and runs forward.
    let times: Vec<f64> = packets
        .iter()
        .map(|p| p["time"].as_f64().unwrap())
        .collect();
    assert_eq!(times[0], 0.0, "{c:#}");
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    // The pcap file holds the same frames.
    let frames = vxlab::packet::read_pcap(&mut std::fs::File::open(&pcap).unwrap()).unwrap();
    assert_eq!(frames.len(), c["frames"].as_u64().unwrap() as usize);
    let again: Vec<_> = frames
        .iter()
        .filter_map(|f| vxlab::packet::decode(&f.data, 4789))
        .collect();
    assert_eq!(again.len(), packets.len());
    assert_eq!(again[0].outer_dst.to_string(), "239.1.1.1");
    std::fs::remove_file(&pcap).unwrap();
    lab.down_leaves_nothing();
}

#[test]
fn head_end_replication_sends_one_copy_of_the_flood_per_peer() {
    let lab = Lab::shipped("unicast.yaml", "t-hcap", &[("192.168.30.", "192.168.47.")]);
    let (code, _) = lab.up();
    assert_eq!(code, 0);
    let c = json_of(&lab.run(&[
        "capture", "--lab", "t-hcap", "vm-a", "--json", "--count", "1",
    ]));
    let packets = common::capture_packets(&c);
    let arp: Vec<&&Value> = packets
        .iter()
        .filter(|p| p["inner"]["kind"] == "arp_request" && p["outer_src"] == "192.168.47.2")
        .collect();
    let mut dsts: Vec<&str> = arp
        .iter()
        .map(|p| p["outer_dst"].as_str().unwrap())
        .collect();
    dsts.sort();
    assert_eq!(dsts, ["192.168.47.3", "192.168.47.4"], "{c:#}");
    assert!(packets.iter().all(|p| p["multicast"] == false));
    assert!(
        c["summary"]["text"].as_str().unwrap().contains(
            "went as 2 unicast copies, one per peer VTEP (head-end replication: 192.168.47.3, \
             192.168.47.4)"
        ),
        "{c:#}"
    );
    lab.down_leaves_nothing();

    // Static FDB, learning off: the flood is head-end, the rest goes by the static entries.
    let st = Lab::shipped("static.yaml", "t-scap", &[("192.168.60.", "192.168.53.")]);
    assert_eq!(st.up().0, 0);
    let c = json_of(&st.run(&["capture", "--lab", "t-scap", "vm-a", "--json"]));
    let text = c["summary"]["text"].as_str().unwrap();
    assert!(text.contains("went as 2 unicast copies"), "{c:#}");
    assert!(text.contains("learning is off"), "{c:#}");
    assert_eq!(c["summary"]["unicast"], c["summary"]["packets"], "{c:#}");
    st.down_leaves_nothing();
}

/// The kinds of the inner frames a capture showed.
fn inner_kinds(c: &Value) -> Vec<String> {
    c["packets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p["packet"]["inner"]["kind"]
                .as_str()
                .unwrap_or("not vxlan")
                .to_string()
        })
        .collect()
}

#[test]
fn an_ipv4_capture_shows_the_lesson_and_no_autoconfiguration_unless_asked() {
    let lab = Lab::shipped(
        "two-netns.yaml",
        "t-quiet",
        &[("192.168.10.", "192.168.54.")],
    );
    assert_eq!(lab.up().0, 0);
    let c = json_of(&lab.run(&["capture", "--lab", "t-quiet", "vm-a", "--json"]));
    let kinds = inner_kinds(&c);
    assert!(
        kinds
            .iter()
            .all(|k| ["arp_request", "arp_reply", "echo"].contains(&k.as_str())),
        "{c:#}"
    );
    // What was hidden is counted: shown and hidden add up to every frame captured.
    let hidden: u64 = c["hidden"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(
        kinds.len() as u64 + hidden,
        c["frames"].as_u64().unwrap(),
        "{c:#}"
    );
    // Asked for every VXLAN packet: the overlay carries no MLD report or router solicitation,
    // since the IPv4 overlay's devices have no IPv6 link-local address.
    let c = json_of(&lab.run(&[
        "capture", "--lab", "t-quiet", "vm-a", "--only", "vxlan", "--json",
    ]));
    assert!(
        c["packets"].as_array().unwrap().iter().all(|p| {
            let s = p["summary"].as_str().unwrap();
            !s.contains("MLD") && !s.contains("router solicitation") && !s.contains("ICMPv6")
        }),
        "{c:#}"
    );
    assert!(inner_kinds(&c).contains(&"arp_request".to_string()));
    // --only arp and --only icmp split the lesson.
    let arp = json_of(&lab.run(&[
        "capture", "--lab", "t-quiet", "vm-a", "--only", "arp", "--json",
    ]));
    assert!(
        inner_kinds(&arp).iter().all(|k| k.starts_with("arp_")),
        "{arp:#}"
    );
    let icmp = json_of(&lab.run(&[
        "capture", "--lab", "t-quiet", "vm-a", "--only", "icmp", "--json",
    ]));
    assert!(!inner_kinds(&icmp).is_empty());
    assert!(inner_kinds(&icmp).iter().all(|k| k == "echo"), "{icmp:#}");
    // Pings that should be answered and are not fail the capture, as they fail `ping`.
    let down = std::process::Command::new("ip")
        .args(["-n", "vxlab-t-quiet.vm-b", "link", "set", "vxlan0", "down"])
        .status()
        .unwrap();
    assert!(down.success());
    let out = lab.run(&["capture", "--lab", "t-quiet", "vm-a", "--count", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("NOT answered"), "{text}");
    lab.down_leaves_nothing();
}

#[test]
fn capture_with_keep_says_the_first_echo_went_straight_to_the_peer() {
    let lab = Lab::shipped(
        "two-netns.yaml",
        "t-keep",
        &[("192.168.10.", "192.168.55.")],
    );
    assert_eq!(lab.up().0, 0);
    // The checks of `up` taught both VTEPs each other; --keep keeps that.
    let out = lab.run(&[
        "capture", "--lab", "t-keep", "vm-b", "--keep", "--count", "2", "--json",
    ]);
    let c = json_of(&out);
    let s = &c["summary"];
    let text = s["text"].as_str().unwrap();
    assert!(
        text.contains("went unicast straight to VTEP 192.168.55.2")
            && text.contains("(vm-a) is behind (it had learned it, and --keep kept it)"),
        "{c:#}"
    );
    assert!(
        !text.contains("0 unicast copies") && !text.contains("head-end"),
        "{text}"
    );
    assert_eq!(c["forgot"].as_array().unwrap().len(), 0);
    // The counts it gives are the packets shown.
    let packets = c["packets"].as_array().unwrap();
    assert_eq!(
        s["packets"].as_u64().unwrap() as usize,
        packets.len(),
        "{c:#}"
    );
    let unicast = packets
        .iter()
        .filter(|p| p["packet"]["multicast"] == false)
        .count();
    assert_eq!(s["unicast"].as_u64().unwrap() as usize, unicast);
    assert!(
        text.contains(&format!("{unicast} of the {} packets", packets.len())),
        "{text}"
    );
    lab.down_leaves_nothing();
}

#[test]
fn an_isolation_capture_sends_the_pings_and_shows_nothing_crossing_to_the_other_vni() {
    let lab = Lab::shipped("two-vni.yaml", "t-iso", &[("192.168.20.", "192.168.56.")]);
    assert_eq!(lab.up().0, 0);
    let c = json_of(&lab.run(&[
        "capture",
        "--lab",
        "t-iso",
        "vm-a",
        "--to",
        "192.168.43.3",
        "--count",
        "2",
        "--json",
    ]));
    assert_eq!(c["answered"], false, "{c:#}");
    assert_eq!(c["summary"]["crossed"], 0, "{c:#}");
    let packets = common::capture_packets(&c);
    // The pings were sent anyway: vm-a asked for 192.168.43.3 inside its own VNI 42...
    assert!(
        packets.iter().any(|p| p["vni"] == 42
            && p["outer_src"] == "192.168.56.2"
            && p["inner"]["kind"] == "arp_request"
            && p["inner"]["target"] == "192.168.43.3"),
        "{c:#}"
    );
    // ... and not one frame from vm-a carried VNI 43.
    assert!(
        !packets
            .iter()
            .any(|p| p["vni"] == 43 && p["outer_src"] == "192.168.56.2"),
        "{c:#}"
    );
    let text = c["summary"]["text"].as_str().unwrap();
    assert!(
        text.starts_with("192.168.43.3 is vm-c's address on vxlan43 (VNI 43)"),
        "{text}"
    );
    assert!(
        text.contains("Nothing crossed to VNI 43: 0 packets"),
        "{text}"
    );
    // The other side, watched on vm-c's own link: nothing came back from it.
    assert!(
        text.contains("On vm-c's own underlay link, watched meanwhile (its VNI 43 VTEP)")
            && text.contains("its VTEP sent nothing back to vm-a or into VNI 42"),
        "{text}"
    );
    assert!(c["ping"].as_str().unwrap().contains("-I vxlan42"), "{c:#}");
    lab.down_leaves_nothing();
}

#[test]
fn show_fdb_lists_the_learned_peer_with_its_vtep_and_static_labs_only_permanent_entries() {
    let lab = Lab::shipped(
        "two-netns.yaml",
        "t-show",
        &[("192.168.10.", "192.168.48.")],
    );
    let (code, r) = lab.up();
    assert_eq!(code, 0);
    let mac_b = vtep(&r, "vm-b", "vxlan0")["mac"]
        .as_str()
        .unwrap()
        .to_string();
    let s = json_of(&lab.run(&["show", "--lab", "t-show", "vm-a", "fdb", "--json"]));
    let rows = s["tables"][0]["rows"].as_array().unwrap();
    let peer = rows
        .iter()
        .find(|r| r["cells"][0] == mac_b.as_str())
        .unwrap_or_else(|| panic!("{s:#}"));
    assert_eq!(peer["cells"][1], "192.168.48.3");
    assert!(peer["meaning"]
        .as_str()
        .unwrap()
        .starts_with("learned: vm-b is behind VTEP 192.168.48.3"));
    let flood = rows
        .iter()
        .find(|r| r["cells"][0] == "00:00:00:00:00:00")
        .unwrap();
    assert!(flood["meaning"]
        .as_str()
        .unwrap()
        .contains("group 239.1.1.1"));
    // The text form names the command a student types, and the group row explains itself.
    let text = String::from_utf8(lab.run(&["show", "--lab", "t-show", "vm-b"]).stdout).unwrap();
    assert!(text.contains("bridge fdb show dev vxlan0"), "{text}");
    assert!(
        text.contains("joined because vxlan0 (VNI 42) floods to it"),
        "{text}"
    );
    assert!(text.contains("the overlay: sent into vxlan0"), "{text}");
    lab.down_leaves_nothing();

    let st = Lab::shipped("static.yaml", "t-static", &[("192.168.60.", "192.168.49.")]);
    let (code, r) = st.up();
    assert_eq!(code, 0, "{r:#}");
    let s = json_of(&st.run(&["show", "--lab", "t-static", "vm-a", "fdb", "--json"]));
    let rows = s["tables"][0]["rows"].as_array().unwrap();
    // Two flood entries and two peers, nothing learned.
    assert_eq!(rows.len(), 4, "{s:#}");
    assert!(rows.iter().all(|r| r["cells"][3] == "permanent"), "{s:#}");
    assert_eq!(
        rows.iter()
            .filter(|r| r["meaning"].as_str().unwrap().starts_with("static:"))
            .count(),
        2
    );
    assert_eq!(guest(&r, "vm-a")["vteps"][0]["kernel"]["learning"], false);
    st.down_leaves_nothing();
}

#[test]
fn walk_shows_the_peer_learned_first_at_the_first_ping_under_the_commands_that_caused_it() {
    let lab = Lab::shipped(
        "two-netns.yaml",
        "t-walk",
        &[("192.168.10.", "192.168.50.")],
    );
    let plan = json_of(&lab.run(&["plan", "--json", lab.file.to_str().unwrap()]));
    let mac = |g: usize| {
        plan["guests"][g]["vteps"][0]["mac"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (mac_a, mac_b) = (mac(0), mac(1));
    let out = lab.run(&["walk", lab.file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("`{needle}` missing:\n{text}"))
    };
    // Each after the one before it.
    let mut from = 0;
    let mut next = |needle: &str| {
        from += text[from..]
            .find(needle)
            .unwrap_or_else(|| panic!("`{needle}` missing after byte {from}:\n{text}"));
        from
    };
    let _ = [
        // How vxlab checks each guest can do vxlan, then how it reads the guests between
        // commands: the commands it runs.
        next("vxlab checks that each guest can do vxlan"),
        next("  $ uname -r\n"),
        next("  $ ip link help\n"),
        next("vxlab reads every guest and shows what changed"),
        next("  $ ip -j -d link show\n"),
        next("  $ ip -j -d maddr show dev eth0\n"),
        next("  $ bridge -j fdb show dev vxlan0\n"),
        next("== 1. the underlay"),
        next("$ ip link add vxbr-t-walk type bridge"),
        // The owner mark vxlab gives each host link and bridge, as a command too.
        next("$ ip link set dev vxbr-t-walk alias 'vxlab: t-walk'"),
        next("$ ip netns add vxlab-t-walk.vm-a"),
        next(" type veth peer name eth0 netns vxlab-t-walk.vm-a\n"),
        next(" alias 'vxlab: vxlab-t-walk.vm-a'\n"),
        next("vm-a:\n  $ ip link set up lo"),
        next("$ ip addr add 192.168.50.2/24 dev eth0"),
        next("== 2. the vxlan devices"),
        next("vm-a:\n  $ ip link add vxlan0 address 02:"),
        next(" type vxlan id 42 group 239.1.1.1 dev eth0"),
        next("$ ip link set dev vxlan0 addrgenmode none"),
        next("  vm-a + ip maddr: 239.1.1.1 on eth0: joined because vxlan0"),
        next("vm-b:\n  $ ip link add vxlan0"),
        next("  vm-b + ip maddr: 239.1.1.1 on eth0"),
        next("== 3. the overlay addresses"),
        next("vm-a:\n  $ ip addr add 192.168.42.2/24 dev vxlan0"),
        next("== 4. the first ping"),
        next("vm-a:\n  $ ping -c 1 -W 3 -q 192.168.42.3"),
        next("ping vm-a -> 192.168.42.3: answered"),
        next("== 5. the checks"),
        next("  $ ping -c 1 -W 1 -q 192.168.42.3"),
        next("checks passed"),
    ];
    // Nothing is learned before the first ping: it is the first place either peer's MAC shows
    // in an FDB, and both VTEPs learn there, under vm-a's ping.
    let ping_at = at("== 4. the first ping");
    let learned = |mac: &str| {
        text.match_indices("+ bridge fdb")
            .map(|(i, _)| &text[i..i + text[i..].find('\n').unwrap()])
            .find(|l| l.contains(mac))
            .map(|l| (text.find(l).unwrap(), l.to_string()))
            .unwrap_or_else(|| panic!("{mac} never learned:\n{text}"))
    };
    let (b_at, b_line) = learned(&mac_b);
    let (a_at, a_line) = learned(&mac_a);
    assert!(b_at > ping_at && a_at > ping_at, "{text}");
    assert!(
        b_line.contains("dst 192.168.50.3: learned: vm-b"),
        "{b_line}"
    );
    assert!(
        a_line.contains("dst 192.168.50.2: learned: vm-a"),
        "{a_line}"
    );
    assert!(text.contains(&format!("  vm-a + bridge fdb vxlan0: {mac_b}")));
    assert!(text.contains(&format!("  vm-b + bridge fdb vxlan0: {mac_a}")));
    // Nothing was forgotten behind the student's back.
    assert!(!text.contains("ip neigh flush"), "{text}");
    // The lab stays up and checks; a second walk refuses to start over it.
    assert_eq!(lab.check().0, 0);
    let again = lab.run(&["walk", lab.file.to_str().unwrap()]);
    assert_ne!(again.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&again.stderr).contains("is running"));
    lab.down_leaves_nothing();
}

#[test]
fn a_unicast_walk_learns_nothing_before_the_first_ping_and_then_only_from_it() {
    let lab = Lab::shipped("unicast.yaml", "t-walku", &[("192.168.30.", "192.168.53.")]);
    let plan = json_of(&lab.run(&["plan", "--json", lab.file.to_str().unwrap()]));
    let out = lab.run(&["walk", lab.file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    let ping_at = text
        .find("== 4. the first ping")
        .expect("a first-ping stage");
    let checks_at = text.find("== 5. the checks").expect("a checks stage");
    // Stage 2 puts the head-end flood entries in, one per peer, and nothing else.
    let two = &text[text.find("== 2.").unwrap()..text.find("== 3.").unwrap()];
    assert_eq!(
        two.matches("+ bridge fdb vxlan0: 00:00:00:00:00:00 dst")
            .count(),
        6,
        "{two}"
    );
    // And its words are about head-end replication: no group is joined.
    assert!(
        two.contains("without a group, nothing is joined") && !two.contains("joins the group"),
        "{two}"
    );
    // No guest's MAC appears in any FDB before vm-a pings vm-b (IPv6 autoconfiguration
    // taught vm-c once); at the ping, vm-b learns vm-a, vm-a learns vm-b, and vm-c learns
    // vm-a from the ARP request flooded to it.
    let macs: Vec<String> = (0..3)
        .map(|g| {
            plan["guests"][g]["vteps"][0]["mac"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for mac in &macs {
        let early: Vec<&str> = text[..ping_at]
            .lines()
            .filter(|l| l.contains("+ bridge fdb") && l.contains(mac.as_str()))
            .collect();
        assert!(
            early.is_empty(),
            "{mac} learned before the ping: {early:?}\n{text}"
        );
    }
    let four = &text[ping_at..checks_at];
    assert!(
        four.contains("vm-a:\n  $ ping -c 1 -W 3 -q 10.100.0.2"),
        "{four}"
    );
    assert!(
        four.contains(&format!("  vm-a + bridge fdb vxlan0: {}", macs[1])),
        "{four}"
    );
    assert!(
        four.contains(&format!("  vm-b + bridge fdb vxlan0: {}", macs[0])),
        "{four}"
    );
    assert!(
        four.contains(&format!("  vm-c + bridge fdb vxlan0: {}", macs[0])),
        "{four}"
    );
    assert!(
        !four.contains(&format!("vm-c + bridge fdb vxlan0: {}", macs[1])),
        "{four}"
    );
    lab.down_leaves_nothing();
}

#[test]
fn a_walk_of_an_ipv6_overlay_says_autoconfiguration_teaches_the_vteps_early() {
    let lab = Lab::shipped("ipv6.yaml", "t-walk6", &[("fd00:10::", "fd00:51::")]);
    let out = lab.run(&["walk", lab.file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("vxlan6 (VNI 66) carries an IPv6 overlay")
            && text.contains("autoconfiguration traffic teaches the VTEPs each other early"),
        "{text}"
    );
    // The IPv4 overlay beside it gets no link-local address, the IPv6 one does.
    let two = &text[text.find("== 2.").unwrap()..text.find("== 3.").unwrap()];
    assert!(
        two.contains("$ ip link set dev vxlan0 addrgenmode none"),
        "{two}"
    );
    assert!(!two.contains("dev vxlan6 addrgenmode"), "{two}");
    // Whatever is learned before the first ping is credited to that traffic, not to the
    // commands printed above it; on the first ping nothing is.
    let before_ping = &text[..text.find("== 4.").unwrap()];
    for line in before_ping
        .lines()
        .filter(|l| l.contains("+ bridge fdb") && l.contains("learned:"))
    {
        assert!(
            line.contains("taught not by these commands but by the IPv6 autoconfiguration"),
            "{line}"
        );
    }
    let ping = &text[text.find("== 4.").unwrap()..];
    assert!(!ping.contains("taught not by these commands"), "{ping}");
    lab.down_leaves_nothing();
}

#[test]
fn thirty_copies_of_the_seed_lab_run_side_by_side() {
    let lab = Lab::shipped("two-netns.yaml", "t-ws", &[]);
    struct DownAll<'a>(&'a Lab);
    impl Drop for DownAll<'_> {
        fn drop(&mut self) {
            let _ = self.0.run(&["down", "t-ws", "--all"]);
        }
    }
    let _guard = DownAll(&lab);
    let out = lab.run(&["up", lab.file.to_str().unwrap(), "--count", "30", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports = json_of(&out);
    let reports = reports.as_array().unwrap();
    assert_eq!(reports.len(), 30);
    for r in reports {
        assert!(r["failures"].as_array().unwrap().is_empty(), "{r:#}");
    }
    // Every copy has its own names, bridge and subnet.
    let status = json_of(&lab.run(&["status", "--json"]));
    let rows = status["labs"].as_array().unwrap();
    assert_eq!(rows.len(), 30);
    let distinct = |k: &str| {
        let mut v: Vec<String> = rows.iter().map(|r| r[k].to_string()).collect();
        v.sort();
        v.dedup();
        v.len()
    };
    assert_eq!(distinct("lab"), 30);
    assert_eq!(distinct("bridge"), 30);
    assert_eq!(distinct("underlay"), 30);
    assert!(rows
        .iter()
        .all(|r| r["instance_of"] == "t-ws" && r["ok"] == true && r["checked_now"] == true));
    assert!(rows
        .iter()
        .all(|r| r["bridge"].as_str().unwrap().len() <= 15));
    // Any copy checks on its own, and every student sees the seed's overlay addresses.
    let (code, c) = {
        let out = lab.run(&["check", "--json", "t-ws-17"]);
        (out.status.code(), json_of(&out))
    };
    assert_eq!(code, Some(0));
    assert_eq!(vtep(&c, "vm-a", "vxlan0")["kernel"]["group"], "239.1.1.1");
    // Its underlay came from the default pool, the guests keeping their place in it.
    let underlay = guest(&c, "vm-b")["underlay"].as_str().unwrap().to_string();
    assert!(
        underlay.starts_with("10.100.") && underlay.ends_with(".3/24"),
        "{underlay}"
    );
    // Every copy at once, one line each.
    let all = lab.run(&["check", "t-ws", "--all"]);
    assert_eq!(all.status.code(), Some(0));
    let lines = String::from_utf8(all.stdout).unwrap();
    assert_eq!(lines.lines().count(), 30, "{lines}");
    assert!(lines
        .lines()
        .all(|l| l.starts_with("t-ws-") && l.contains("checks passed")));
    // The lab's own name, with only copies running, names them.
    let base = lab.run(&["check", "t-ws"]);
    let err = String::from_utf8_lossy(&base.stderr);
    assert!(
        err.contains("lab t-ws is not running, but 30 copies of it are: t-ws-1 .. t-ws-30")
            && err.contains("`vxlab check t-ws --all`"),
        "{err}"
    );
    // So does `reset`, which has no --all: one copy at a time.
    let out = lab.run(&["reset", "t-ws"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(66), "{err}");
    assert!(
        err.contains("lab t-ws is not running, but 30 copies of it are: t-ws-1 .. t-ws-30; `vxlab reset t-ws-1` one"),
        "{err}"
    );
    // So does `down`, which then removes nothing.
    let out = lab.run(&["down", "t-ws"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(66), "{err}");
    assert!(
        err.contains("lab t-ws is not running, but 30 copies of it are: t-ws-1 .. t-ws-30")
            && err.contains("`vxlab down t-ws --all` removes them all"),
        "{err}"
    );
    assert_eq!(
        json_of(&lab.run(&["status", "--json"]))["labs"]
            .as_array()
            .unwrap()
            .len(),
        30
    );
    let out = lab.run(&["down", "t-ws", "--all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vxlab-t-ws-"))
        .chain(
            std::fs::read_dir("/sys/class/net")
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("vxbr-t-ws")),
        )
        .collect();
    assert_eq!(left, Vec::<String>::new());
    assert_eq!(std::fs::read_dir(lab.state.path()).unwrap().count(), 0);
}

#[test]
fn check_of_a_running_lab_names_its_copies_running_beside_it() {
    let lab = Lab::shipped("two-netns.yaml", "t-cb", &[("192.168.10.", "192.168.54.")]);
    struct DownAll<'a>(&'a Lab);
    impl Drop for DownAll<'_> {
        fn drop(&mut self) {
            let _ = self.0.run(&["down", "t-cb", "--all"]);
        }
    }
    let _guard = DownAll(&lab);
    assert_eq!(lab.up().0, 0);
    let file = lab.file.to_str().unwrap();
    let out = lab.run(&["up", file, "--count", "2", "--pool", "10.213.0.0/16"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = lab.run(&["check", "t-cb"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("checks passed"), "{text}");
    assert!(
        text.contains(
            "2 copies of lab t-cb also running, not checked here: t-cb-1, t-cb-2 \
             (`vxlab check t-cb --all` checks them)"
        ),
        "{text}"
    );
    // JSON stays one report, of the lab asked for.
    let out = lab.run(&["check", "t-cb", "--json"]);
    assert_eq!(json_of(&out)["lab"], "t-cb");
    // `--all` checks the copies, one line each.
    let out = lab.run(&["check", "t-cb", "--all"]);
    let lines = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{lines}");
    assert!(
        lines.contains("t-cb-1") && lines.contains("t-cb-2"),
        "{lines}"
    );
}

/// A lab of `n` guests: VNI 100 joins them all, VNI 200 the first half, VNI 300 (from five
/// guests) the second half.
fn lab_of(n: usize) -> String {
    let guests: String = (1..=n)
        .map(|i| format!("  g{i}: {{ address: 192.168.10.{} }}\n", i + 1))
        .collect();
    let vxlan = |vni: u32, members: std::ops::RangeInclusive<usize>, net: u32| {
        let addresses: String = members
            .map(|i| format!("      g{i}: 10.{net}.0.{i}/24\n"))
            .collect();
        format!(
            "  - name: vxlan{vni}\n    vni: {vni}\n    group: 239.1.1.{net}\n    addresses:\n{addresses}"
        )
    };
    let mut vxlans = vxlan(100, 1..=n, 1) + &vxlan(200, 1..=n / 2, 2);
    if n >= 5 {
        vxlans += &vxlan(300, n / 2 + 1..=n, 3);
    }
    format!(
        "name: g{n}\ndriver: netns\nunderlay:\n  bridge: vxbr-g{n}\n  subnet: 192.168.10.0/24\n\
         guests:\n{guests}vxlans:\n{vxlans}"
    )
}

#[test]
fn the_graph_fits_a_16_9_slide_in_one_font_with_every_guest_vni_and_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<std::path::PathBuf> = (2..=6)
        .map(|n| {
            let f = dir.path().join(format!("g{n}.yaml"));
            std::fs::write(&f, lab_of(n)).unwrap();
            f
        })
        .collect();
    files.push(common::root().join("labs/two-vni.yaml"));
    files.push(common::root().join("labs/two-vm.yaml"));
    // A PNG is made from the SVG (below); asked for directly, it is refused, and no file of
    // DOT text is left under a .png name.
    let png_asked = dir.path().join("asked.png");
    let out = vxlab(&[
        "graph",
        files[0].to_str().unwrap(),
        "-o",
        png_asked.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not .png"));
    assert!(!png_asked.exists());
    for file in &files {
        let path = file.to_str().unwrap();
        let plan = json_of(&vxlab(&["plan", "--json", path]));
        let svg_file = dir.path().join("graph.svg");
        let out = vxlab(&[
            "graph",
            path,
            "--format",
            "svg",
            "-o",
            svg_file.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Graphviz writes `-` as `&#45;`.
        let svg = std::fs::read_to_string(&svg_file)
            .unwrap()
            .replace("&#45;", "-");
        // On a slide: rendered by librsvg, near 16:9.
        let png = dir.path().join("graph.png");
        let r = Command::new("rsvg-convert")
            .arg(&svg_file)
            .arg("-o")
            .arg(&png)
            .status()
            .expect("rsvg-convert (librsvg2-bin) is installed");
        assert!(r.success());
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap()) as f64;
        let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap()) as f64;
        assert!(
            (1.65..=1.9).contains(&(w / h)),
            "{path}: {w}x{h} is not near 16:9"
        );
        // One sans-serif font for every label.
        let mut fonts: Vec<&str> = svg
            .split("font-family=\"")
            .skip(1)
            .map(|s| s.split('"').next().unwrap())
            .collect();
        fonts.sort();
        fonts.dedup();
        assert_eq!(fonts, ["Helvetica,sans-Serif"], "{path}");
        // Every guest, VNI and overlay address is in the picture's text.
        let text: String = svg
            .split("<text")
            .skip(1)
            .map(|t| t.split('>').nth(1).unwrap().split('<').next().unwrap())
            .collect::<Vec<_>>()
            .join("\n");
        for g in plan["guests"].as_array().unwrap() {
            let name = g["name"].as_str().unwrap();
            assert!(
                text.lines().any(|l| l == name),
                "{path}: guest {name} missing:\n{text}"
            );
            for v in g["vteps"].as_array().unwrap() {
                let vni = format!("VNI {}", v["vni"]);
                let address = v["address"].as_str().unwrap();
                assert!(text.contains(&vni), "{path}: {vni} missing");
                assert!(text.contains(address), "{path}: {address} missing");
            }
        }
        let mermaid =
            String::from_utf8(vxlab(&["graph", path, "--format", "mermaid"]).stdout).unwrap();
        for g in plan["guests"].as_array().unwrap() {
            let name = g["name"].as_str().unwrap();
            assert!(mermaid.contains(&format!("[\"{name}\"]")), "{path}: {name}");
        }
    }
}

#[test]
fn the_plan_alone_rebuilds_the_lab_by_hand() {
    // Only the printed commands, run as a student would: the host side on the host, each
    // guest's steps inside its namespace. No vxlab in between.
    let lab = Lab::shipped(
        "two-netns.yaml",
        "t-byhand",
        &[("192.168.10.", "192.168.52.")],
    );
    let plan = json_of(&lab.run(&["plan", "--json", lab.file.to_str().unwrap()]));
    /// Namespaces, the bridge, and the fence's rules (each `-I` undone by a `-D`).
    struct Cleanup(Vec<String>, String, Vec<Vec<String>>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for ns in &self.0 {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
            let _ = Command::new("ip").args(["link", "del", &self.1]).status();
            for argv in &self.2 {
                let undo: Vec<&str> = argv
                    .iter()
                    .map(|w| if w == "-I" { "-D" } else { w.as_str() })
                    .collect();
                let _ = Command::new(undo[0]).args(&undo[1..]).status();
            }
        }
    }
    let namespaces: Vec<String> = plan["guests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["instance"].as_str().unwrap().to_string())
        .collect();
    let words = |c: &Value| -> Vec<String> {
        c["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap().to_string())
            .collect()
    };
    let fence: Vec<Vec<String>> = plan["host"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["by"] == "vxlab_firewall")
        .flat_map(|p| p["commands"].as_array().unwrap().iter().map(words))
        .collect();
    assert_eq!(fence.len(), 14, "{plan:#}");
    let _cleanup = Cleanup(namespaces, "vxbr-t-byhand".into(), fence);
    let run = |argv: Vec<String>| {
        let out = Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{argv:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for part in plan["host"].as_array().unwrap() {
        assert!(
            part["by"] == "vxlab" || part["by"] == "vxlab_firewall",
            "{part:#}"
        );
        for c in part["commands"].as_array().unwrap() {
            run(words(c));
        }
    }
    // The bridge and each host link carry their owner as vxlab marks them, so vxlab and
    // the host's other users can tell whose they are.
    let alias = |link: &str| {
        std::fs::read_to_string(format!("/sys/class/net/{link}/ifalias"))
            .unwrap_or_default()
            .trim_end()
            .to_string()
    };
    assert_eq!(alias("vxbr-t-byhand"), "vxlab: t-byhand");
    for g in plan["guests"].as_array().unwrap() {
        let link = g["host_link"].as_str().unwrap();
        let ns = g["instance"].as_str().unwrap();
        assert_eq!(alias(link), format!("vxlab: {ns}"), "{g:#}");
    }
    for g in plan["guests"].as_array().unwrap() {
        let ns = g["instance"].as_str().unwrap();
        for s in g["steps"].as_array().unwrap() {
            let mut argv: Vec<String> = ["ip", "netns", "exec", ns].map(String::from).to_vec();
            argv.extend(words(&s["command"]));
            run(argv);
        }
    }
    // The seed's lesson holds on the lab built by hand.
    run([
        "ip",
        "netns",
        "exec",
        "vxlab-t-byhand.vm-a",
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "192.168.42.3",
    ]
    .map(String::from)
    .to_vec());
    let fdb = Command::new("ip")
        .args([
            "netns",
            "exec",
            "vxlab-t-byhand.vm-a",
            "bridge",
            "fdb",
            "show",
            "dev",
            "vxlan0",
        ])
        .output()
        .unwrap();
    let fdb = String::from_utf8_lossy(&fdb.stdout);
    let mac_b = plan["guests"][1]["vteps"][0]["mac"].as_str().unwrap();
    assert!(fdb.contains(&format!("{mac_b} dst 192.168.52.3")), "{fdb}");
}

#[test]
fn two_labs_with_pools_on_one_host_get_disjoint_underlays() {
    // Two instructors, each with their own state directory: only the host's routes tell one
    // lab's copies from the other's.
    let a = Lab::shipped("two-netns.yaml", "t-pa", &[]);
    let b = Lab::shipped("unicast.yaml", "t-pb", &[]);
    b.append("workshop: { pool: 10.231.0.0/22 }\n");
    struct DownAll<'a>(&'a Lab);
    impl Drop for DownAll<'_> {
        fn drop(&mut self) {
            let _ = self.0.run(&["down", &self.0.name, "--all"]);
        }
    }
    let (_a, _b) = (DownAll(&a), DownAll(&b));
    // `up --count N` of the lab, with `extra`: its exit status and what it said on stderr.
    let try_up = |lab: &Lab, count: &str, extra: &[&str]| {
        let mut args = vec!["up", lab.file.to_str().unwrap(), "--count", count];
        args.extend(extra);
        let out = lab.run(&args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), err)
    };
    let up = |lab: &Lab, extra: &[&str]| {
        let (code, err) = try_up(lab, "2", extra);
        assert_eq!(code, Some(0), "{err}");
    };
    up(&a, &["--pool", "10.231.0.0/22"]);
    up(&b, &[]);
    let underlays = |lab: &Lab| -> Vec<ipnet::IpNet> {
        json_of(&lab.run(&["status", "--json"]))["labs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["underlay"].as_str().unwrap().parse().unwrap())
            .collect()
    };
    let mut all = underlays(&a);
    all.extend(underlays(&b));
    assert_eq!(all.len(), 4, "{all:?}");
    let pool: ipnet::IpNet = "10.231.0.0/22".parse().unwrap();
    assert!(all.iter().all(|n| pool.contains(n)), "{all:?}");
    let mut distinct = all.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "{all:?}");
    // Both labs pass their checks on their own subnets.
    for (lab, name) in [(&a, "t-pa"), (&b, "t-pb")] {
        let out = lab.run(&["check", name, "--all"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // The pool is full now: a third copy is refused once, truly, and nothing is created.
    let (code, err) = try_up(&b, "3", &[]);
    assert_eq!(code, Some(64), "{err}");
    assert_eq!(err.matches("free /24 subnets").count(), 1, "{err}");
    assert!(
        err.contains("no copy of lab t-pb was brought up; nothing was created")
            && err.contains("the workshop pool 10.231.0.0/22 has 0 free /24 subnets")
            && err.contains("`workshop: { pool: … }`")
            && !err.contains("underlay.subnet")
            && !err.contains("part-way"),
        "{err}"
    );
    assert_eq!(underlays(&b).len(), 2);
    // Copies that run stay where they are when another pool is named; `up` says so.
    let (code, err) = try_up(&a, "2", &["--pool", "10.232.0.0/22"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("note: t-pa-1 runs already on 10.231.")
            && err.contains("outside --pool 10.232.0.0/22, and stays there"),
        "{err}"
    );
    // A public range is no pool: the host would route it into lab bridges.
    let (code, err) = try_up(&a, "1", &["--pool", "8.8.8.0/23"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("the workshop pool 8.8.8.0/23 is a public range")
            && err.contains("nothing was created"),
        "{err}"
    );
    assert_eq!(underlays(&a).len(), 2);
    // Nor a lab's underlay, at its line.
    let public = Lab::shipped("two-netns.yaml", "t-pub", &[("192.168.10.", "8.8.8.")]);
    let out = public.run(&["validate", public.file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(
        err.contains("underlay.subnet: 8.8.8.0/24 is a public range"),
        "{err}"
    );
}
