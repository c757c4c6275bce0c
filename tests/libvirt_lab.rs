//! The seed lab on real virtual machines: libvirt, QEMU (software emulation on hosts whose KVM
//! cannot run guests), cloud-init, SSH. Needs root, a running libvirtd, and the debian-12
//! image, which this test builds first when the cache has none (a few minutes, once).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{fdb_dst, ping_replied, vtep, Lab};

fn ensure_image() {
    let list = Command::new(env!("CARGO_BIN_EXE_vxlab"))
        .args(["image", "list"])
        .output()
        .unwrap();
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

    // The guest's own iproute2 agrees, over vxlab's SSH.
    let out = lab.run(&["exec", "vm-a", "--", "ip", "-d", "link", "show", "vxlan0"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("vxlan id 42 group 239.1.1.1 dev eth0"),
        "exit {:?}\nstdout: {shown}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(lab.check().0, 0);
    lab.down_leaves_nothing();
}
