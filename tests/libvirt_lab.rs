//! The seed lab on real virtual machines: libvirt, QEMU (software emulation on hosts whose KVM
//! cannot run guests), cloud-init, SSH, and iproute2 built from Debian's source in both guests
//! at once, as the seed's student does on an old distro. Needs root, a running libvirtd, and
//! the debian-12 image, which this test builds first when the cache has none or an older
//! vxlab built it (a few minutes, once).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{fdb_dst, guest, marked_tarball, ping_replied, vtep, Lab};

fn ensure_image() {
    let list = Command::new(env!("CARGO_BIN_EXE_vxlab"))
        .args(["image", "list"])
        .output()
        .unwrap();
    // `image list` leaves out images an older vxlab built; they are rebuilt.
    if String::from_utf8_lossy(&list.stdout).contains("debian-12") {
        return;
    }
    let build = Command::new(env!("CARGO_BIN_EXE_vxlab"))
        .args(["image", "build", "debian-12"])
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "image build failed: {}",
        String::from_utf8_lossy(&build.stderr)
    );
}

#[test]
fn the_seed_lab_on_two_vms_pings_joins_learns_and_goes_away() {
    ensure_image();
    let lab = Lab::shipped("two-vm.yaml", "two-vm", &[]);
    let work = tempfile::tempdir().unwrap();
    let version = "6.1.0-vxlab-vm";
    let tarball = marked_tarball(work.path(), version);
    lab.append(&format!(
        // -O0: about 2.5 times faster to compile under software emulation.
        "iproute2:\n  build: always\n  source: {}\n  cflags: -O0 -pipe\n",
        tarball.display()
    ));
    // libvirt's qemu user must traverse the state directory to reach the guests' disks.
    std::fs::set_permissions(lab.state.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    let (code, r) = lab.up();
    assert_eq!(code, 0, "{:#}", r);
    assert!(ping_replied(&r, "vm-a", "192.168.42.3"));
    assert!(ping_replied(&r, "vm-b", "192.168.42.2"));
    for g in ["vm-a", "vm-b"] {
        let v = vtep(&r, g, "vxlan0");
        assert_eq!(v["kernel"]["vni"], 42);
        assert_eq!(v["kernel"]["dev"], "eth0");
        assert_eq!(
            v["joined"][0], "239.1.1.1",
            "{g} did not join the group on eth0"
        );
    }
    let mac_a = &vtep(&r, "vm-a", "vxlan0")["mac"];
    let mac_b = &vtep(&r, "vm-b", "vxlan0")["mac"];
    assert_eq!(
        fdb_dst(&r, "vm-a", "vxlan0", mac_b).as_deref(),
        Some("192.168.10.3")
    );
    assert_eq!(
        fdb_dst(&r, "vm-b", "vxlan0", mac_a).as_deref(),
        Some("192.168.10.2")
    );

    // Each guest built its own iproute2 over SSH, and the built ip made the devices.
    for g in ["vm-a", "vm-b"] {
        let t = &guest(&r, g)["iproute2"];
        let hash = t["build"]["hash"].as_str().unwrap();
        let ip = format!("/var/cache/vxlab/iproute2/{hash}/prefix/sbin/ip");
        assert_eq!(t["ip"], ip.as_str(), "{t}");
        assert_eq!(t["build"]["site"], g);
        assert_eq!(t["build"]["reused"], false);
        assert!(t["version"].as_str().unwrap().contains(version), "{t}");
        let v = lab.run(&["exec", g, "--", &ip, "-V"]);
        assert!(String::from_utf8_lossy(&v.stdout).contains(version));
        let log =
            std::fs::read_to_string(lab.state.path().join(format!("two-vm/commands-{g}.log")))
                .unwrap();
        assert!(
            log.lines()
                .any(|l| l.starts_with(&format!("{ip} link add vxlan0 type vxlan id 42"))),
            "{log}"
        );
        let build_log =
            std::fs::read_to_string(lab.state.path().join(format!("two-vm/iproute2-{g}.log")))
                .unwrap();
        assert!(build_log.contains("== verify (exit 0,"), "{build_log}");
    }

    // The guest's own iproute2 agrees, over vxlab's SSH.
    let out = lab.run(&["exec", "vm-a", "--", "ip", "-d", "link", "show", "vxlan0"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("vxlan id 42 group 239.1.1.1 dev eth0"),
        "exit {:?}\nstdout: {shown}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );

    // The teaching views on VMs: the capture on vm-a's tap sees the ARP request flooded to
    // the group and the echoes unicast; `show` explains vm-b's FDB.
    let cap = lab.run(&["capture", "vm-a", "--json", "--count", "2"]);
    let c: serde_json::Value = serde_json::from_slice(&cap.stdout)
        .unwrap_or_else(|_| panic!("capture: {}", String::from_utf8_lossy(&cap.stderr)));
    assert_eq!(c["answered"], true, "{c:#}");
    let packets: Vec<&serde_json::Value> = c["packets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["packet"])
        .collect();
    let arp = packets
        .iter()
        .find(|p| p["inner"]["kind"] == "arp_request")
        .unwrap_or_else(|| panic!("no ARP request: {c:#}"));
    assert_eq!(arp["outer_dst"], "239.1.1.1");
    assert_eq!(arp["vni"], 42);
    assert!(packets
        .iter()
        .any(|p| p["inner"]["kind"] == "echo" && p["multicast"] == false));
    let show = lab.run(&["show", "vm-b", "fdb", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert!(
        s["tables"][0]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["cells"][0] == *mac_a && r["cells"][1] == "192.168.10.2"),
        "{s:#}"
    );

    assert_eq!(lab.check().0, 0);
    lab.down_leaves_nothing();
}
