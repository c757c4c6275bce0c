//! The seed lab on real virtual machines: libvirt, QEMU (software emulation on hosts whose KVM
//! cannot run guests), SSH with pinned host keys, and iproute2 built from Debian's source in
//! both guests at once, as the seed's student does on an old distro; and an image a user
//! brings, booted through cloud-init NoCloud. Needs root, a running libvirtd, and the
//! debian-12 image, which these tests build first when the cache has none or an older vxlab
//! built it (a few minutes, once).

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use common::{ensure_image, fdb_dst, guest, marked_tarball, ping_replied, vtep, Lab};

/// Runs `argv` in `guest` through vxlab's SSH; its standard output, trimmed.
fn guest_says(lab: &Lab, guest: &str, argv: &[&str]) -> String {
    lab.exec(None, guest, argv).trim().to_string()
}

/// vxlab's own image seen from another directory without vxlab's recipe beside it: an image
/// a user brought, its initrd `initrd` when given (else the built one). Its directory stays
/// while the returned guard lives.
fn brought_image(initrd: Option<&[u8]>) -> (tempfile::TempDir, std::path::PathBuf) {
    let built = ensure_image();
    let brought = tempfile::tempdir().unwrap();
    std::fs::set_permissions(brought.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in ["base.qcow2", "vmlinuz", "initrd.img"] {
        match (f, initrd) {
            ("initrd.img", Some(bytes)) => std::fs::write(brought.path().join(f), bytes).unwrap(),
            _ => std::os::unix::fs::symlink(built.join(f), brought.path().join(f)).unwrap(),
        }
    }
    let image = brought.path().join("base.qcow2");
    (brought, image)
}

/// The seed lab with vm-a alone, on underlay `net` (as `192.168.N.`), booting `image`.
fn one_guest_lab(name: &str, net: &str, image: &std::path::Path) -> Lab {
    let lab = Lab::shipped(
        "two-vm.yaml",
        name,
        &[
            ("192.168.10.", net),
            ("image: debian-12", &format!("image: {}", image.display())),
            (&format!("  vm-b: {{ address: {net}3 }}\n"), ""),
            ("      vm-b: 192.168.42.3/24\n", ""),
        ],
    );
    std::fs::set_permissions(lab.state.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    lab
}

#[test]
fn the_seed_lab_on_two_vms_pings_joins_learns_and_goes_away() {
    // The image's kernel, which these guests boot, holds no zeros for QEMU to keep resident
    // in every guest: each loadable segment ends with content, its zeros left to zero fill.
    let image = ensure_image();
    let mut kernel = std::fs::read(image.join("vmlinuz")).unwrap();
    assert_eq!(
        vxlab::driver::libvirt::kernel::trim_segments(&mut kernel),
        Ok(0),
        "{}/vmlinuz still carries zeros in its file",
        image.display()
    );
    // A name and underlay of its own: a lab a user has up from labs/two-vm.yaml (its bridge,
    // its subnet) stays theirs, and this test runs beside it.
    let lab = Lab::shipped("two-vm.yaml", "t-seed", &[("192.168.10.", "192.168.83.")]);
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
        Some("192.168.83.3")
    );
    assert_eq!(
        fdb_dst(&r, "vm-b", "vxlan0", mac_a).as_deref(),
        Some("192.168.83.2")
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
            std::fs::read_to_string(lab.state.path().join(format!("t-seed/commands-{g}.log")))
                .unwrap();
        assert!(
            log.lines()
                .any(|l| l.starts_with(&format!("{ip} link add vxlan0 address "))
                    && l.contains(" type vxlan id 42 ")),
            "{log}"
        );
        let build_log =
            std::fs::read_to_string(lab.state.path().join(format!("t-seed/iproute2-{g}.log")))
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
    // vxlab's own SSH to vm-a crossed the tap first, hidden: the lesson's clock starts at the
    // first frame shown.
    assert!(c["hidden"]["underlay TCP"].as_u64() > Some(0), "{c:#}");
    assert_eq!(c["packets"][0]["time"], 0.0, "{c:#}");
    let packets = common::capture_packets(&c);
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
            .any(|r| r["cells"][0] == *mac_a && r["cells"][1] == "192.168.83.2"),
        "{s:#}"
    );

    // Two guests cloned from one image: each its own name and machine-id, and the interface
    // the lab names.
    let ids: Vec<String> = ["vm-a", "vm-b"]
        .iter()
        .map(|g| {
            assert_eq!(guest_says(&lab, g, &["hostname"]), *g);
            let link = guest_says(&lab, g, &["ip", "-br", "addr", "show", "dev", "eth0"]);
            assert!(link.contains("192.168.83."), "{g}: {link}");
            guest_says(&lab, g, &["cat", "/etc/machine-id"])
        })
        .collect();
    assert_eq!(ids[0].len(), 32, "{ids:?}");
    assert_ne!(ids[0], ids[1], "the two guests share a machine-id");
    assert_eq!(lab.check().0, 0);

    // A student deletes vm-a's overlay address: check names vm-a's overlay address, with the
    // command that puts it back; `up` by the lab's name runs exactly that, over SSH.
    guest_says(
        &lab,
        "vm-a",
        &["ip", "addr", "del", "192.168.42.2/24", "dev", "vxlan0"],
    );
    let (code, r) = lab.check();
    assert_eq!(code, 1);
    let cause = &r["diagnoses"][0]["cause"];
    assert_eq!(cause["guest"], "vm-a", "{r:#}");
    assert_eq!(cause["layer"], "overlay_address", "{r:#}");
    assert_eq!(
        cause["fix"]["commands"][0],
        "ip addr add 192.168.42.2/24 dev vxlan0"
    );
    let out = lab.run(&["up", "--json", "t-seed"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{:#}", r["failures"]);
    let repairs: Vec<&str> = r["repairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["command"]["line"].as_str().unwrap())
        .collect();
    assert_eq!(repairs, ["ip addr add 192.168.42.2/24 dev vxlan0"]);
    assert!(ping_replied(&r, "vm-b", "192.168.42.2"));
    lab.down_leaves_nothing();
}

#[test]
fn a_guest_of_vxlabs_image_gets_the_interface_name_the_lab_gives() {
    // vxlab's image learns its underlay from the kernel command line; a lab that names the
    // interface otherwise than the kernel does gets that name, with its address on it.
    ensure_image();
    let lab = Lab::shipped(
        "two-vm.yaml",
        "named",
        &[
            ("192.168.10.", "192.168.78."),
            (
                "  subnet: 192.168.78.0/24",
                "  subnet: 192.168.78.0/24\n  interface: lab0",
            ),
            ("    dev: eth0\n", "    dev: lab0\n"),
            ("  vm-b: { address: 192.168.78.3 }\n", ""),
            ("      vm-b: 192.168.42.3/24\n", ""),
        ],
    );
    assert!(lab.text().contains("interface: lab0"), "{}", lab.text());
    std::fs::set_permissions(lab.state.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, r) = lab.up();
    assert_eq!(code, 0, "{:#}", r);
    assert_eq!(vtep(&r, "vm-a", "vxlan0")["kernel"]["dev"], "lab0");
    let link = guest_says(&lab, "vm-a", &["ip", "-br", "addr", "show", "dev", "lab0"]);
    assert!(link.contains("192.168.78.2/24"), "{link}");
    let eth0 = lab.run(&["exec", "vm-a", "--", "ip", "link", "show", "dev", "eth0"]);
    let said = String::from_utf8_lossy(&eth0.stderr);
    assert_eq!(eth0.status.code(), Some(1), "eth0 is still there: {said}");
    assert!(said.contains("Device \"eth0\" does not exist"), "{said}");

    // `vxlab console`: the serial console through libvirt's console stream. What the guest
    // writes to its serial port shows; what is typed reaches the guest; Ctrl-] leaves.
    let mut console = common::Terminal::start(&lab, &["console", "vm-a"]);
    console.wait_for("connected to vm-a's serial console (domain vxlab-named.vm-a); Ctrl-] leaves");
    let out = lab.run(&[
        "exec",
        "vm-a",
        "sh",
        "-c",
        "nohup sh -c 'for i in $(seq 30); do echo vxlab-console-here > /dev/ttyS0; sleep 1; done' \
         >/dev/null 2>&1 &",
    ]);
    assert!(out.status.success());
    console.wait_for("vxlab-console-here");
    // The guest reads its serial port: a line typed in the console arrives there.
    let reader = lab.run(&[
        "exec",
        "vm-a",
        "sh",
        "-c",
        "stty -F /dev/ttyS0 raw -echo; nohup sh -c 'head -c 12 /dev/ttyS0 > /tmp/typed' \
         >/dev/null 2>&1 &",
    ]);
    assert!(reader.status.success());
    // A serial port keeps what arrives only while someone has it open: type once the reader
    // has.
    let start = std::time::Instant::now();
    while !guest_says(
        &lab,
        "vm-a",
        &["sh", "-c", "ls -l /proc/$(pgrep -x head)/fd 2>/dev/null"],
    )
    .contains("/dev/ttyS0")
    {
        assert!(
            start.elapsed().as_secs() < 30,
            "the reader never opened ttyS0"
        );
    }
    console.send(b"typed-here\r\n");
    let start = std::time::Instant::now();
    while guest_says(&lab, "vm-a", &["cat", "/tmp/typed"]) != "typed-here" {
        assert!(
            start.elapsed().as_secs() < 30,
            "the typed line never reached the guest"
        );
    }
    // Ctrl-] leaves a quiet console too (the guest has stopped writing).
    guest_says(&lab, "vm-a", &["pkill", "-f", "vxlab-console-[h]ere"]);
    console.send(&[0x1d]);
    let status = console.wait();
    assert!(status.success(), "console: {status}\n{}", console.output());

    // The host key vxlab pinned for vm-a is swapped for another: the guest no longer proves
    // it is the one vxlab made, and vxlab refuses to talk to it, never asking to trust it.
    let keys = lab.state.path().join("named/guests/vm-a");
    let pinned = keys.join("ssh_host_ed25519_key");
    let saved = tempfile::tempdir().unwrap();
    for f in ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"] {
        std::fs::rename(keys.join(f), saved.path().join(f)).unwrap();
    }
    let keygen = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&pinned)
        .status()
        .unwrap();
    assert!(keygen.success());
    let out = lab.run(&["exec", "vm-a", "--", "true"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("presented a host key that is not the one vxlab generated for it; refusing"),
        "{said}"
    );
    for f in ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"] {
        std::fs::rename(saved.path().join(f), keys.join(f)).unwrap();
    }
    assert_eq!(guest_says(&lab, "vm-a", &["hostname"]), "vm-a");

    // The guest freezes (its domain paused: it runs, and answers nothing). `reset` finds it
    // unreachable, removes it and creates it anew from its overlay, and the lab checks again.
    let domain = "vxlab-named.vm-a";
    let virsh = |args: &[&str]| {
        let out = common::virsh(args).unwrap();
        assert!(
            out.status.success(),
            "virsh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let boot_id = guest_says(&lab, "vm-a", &["cat", "/proc/sys/kernel/random/boot_id"]);
    virsh(&["suspend", domain]);
    let out = lab.run(&["reset", "named", "vm-a", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("reset: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(0), "{r:#}");
    assert!(
        r["notes"].as_array().unwrap().iter().any(|n| n
            .as_str()
            .unwrap()
            .contains("vm-a did not answer: it was removed and is created anew")),
        "{r:#}"
    );
    assert_eq!(virsh(&["domstate", domain]), "running");
    assert_ne!(
        guest_says(&lab, "vm-a", &["cat", "/proc/sys/kernel/random/boot_id"]),
        boot_id,
        "vm-a was not booted anew"
    );
    let link = guest_says(&lab, "vm-a", &["ip", "-br", "addr", "show", "dev", "lab0"]);
    assert!(link.contains("192.168.78.2/24"), "{link}");
    assert_eq!(lab.check().0, 0);
    lab.down_leaves_nothing();
}

#[test]
fn an_image_a_user_brings_boots_through_cloud_init_nocloud() {
    // vxlab's own image, seen from another directory without vxlab's recipe beside it, is an
    // image a user brought: vxlab boots it normally and gives it cloud-init NoCloud documents.
    let (_brought, image) = brought_image(None);
    let lab = one_guest_lab("brought", "192.168.77.", &image);
    let (code, r) = lab.up();
    assert_eq!(code, 0, "{:#}", r);
    let v = vtep(&r, "vm-a", "vxlan0");
    assert_eq!(v["kernel"]["vni"], 42);
    assert_eq!(v["joined"][0], "239.1.1.1");
    // cloud-init did it: the seed's hostname, address and keys (vxlab's SSH checked the host
    // key it pinned), and it finishes its later stages with success.
    assert_eq!(guest_says(&lab, "vm-a", &["hostname"]), "vm-a");
    let status = guest_says(&lab, "vm-a", &["cloud-init", "status", "--wait", "--long"]);
    assert!(status.contains("status: done"), "{status}");
    assert!(status.contains("NoCloud"), "{status}");
    let console =
        std::fs::read_to_string(lab.state.path().join("brought/guests/vm-a/console.log")).unwrap();
    assert!(
        !console.contains("vxlab-seed"),
        "the vxlab boot ran:\n{console}"
    );
    lab.down_leaves_nothing();
}

#[test]
fn a_guest_whose_kernel_panics_is_started_again_once_then_up_says_why() {
    // An image a user brought whose initrd is not one: the kernel cannot reach its root file
    // system and panics, every time. vxlab starts the guest again once (a panic under a loaded
    // emulator can pass), then stops waiting and says why, instead of waiting out the boot's
    // whole time limit.
    let (_brought, image) = brought_image(Some(b"not an initramfs\n"));
    let lab = one_guest_lab("panics", "192.168.91.", &image);
    let out = lab.run(&["up", lab.file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "up passed with a panicking kernel");
    assert!(
        stderr.contains("vm-a: its kernel panicked: VFS: Unable to mount root fs")
            && stderr.contains("starting it again"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("timed out"),
        "up waited out the boot: {stderr}"
    );
    // Two boots, two panics, on the console.
    let console =
        std::fs::read_to_string(lab.state.path().join("panics/guests/vm-a/console.log")).unwrap();
    assert_eq!(
        console.matches("end Kernel panic - not syncing").count(),
        2,
        "{console}"
    );
    lab.down_leaves_nothing();
}

#[test]
fn a_console_log_in_a_hosts_pool_is_read_through_libvirt_to_its_latest_end() {
    // A guest on another host logs its console into vxlab's pool there, written by virtlogd,
    // not by libvirt's storage API: vxlab reads its end through a volume download stream (no
    // SSH), finding the file after a refresh and its size as it grows.
    use vxlab::driver::libvirt::remote::storage;
    let conn = virt::connect::Connect::open(Some("qemu:///system")).unwrap();
    let pool = storage::ensure_pool(&conn).unwrap();
    let xml = pool.get_xml_desc(0).unwrap();
    let dir = xml
        .split("<path>")
        .nth(1)
        .unwrap()
        .split("</path>")
        .next()
        .unwrap();
    let name = format!("vxlab-test-console-{}.log", std::process::id());
    let path = std::path::Path::new(dir).join(&name);
    let mut log = String::new();
    for i in 0..500 {
        log.push_str(&format!("[ {i}.000] line {i}\n"));
    }
    std::fs::write(&path, &log).unwrap();
    let end = storage::read_end(&conn, &pool, &name, 4096)
        .unwrap()
        .unwrap();
    assert_eq!(end.len(), 4096);
    assert!(log.ends_with(std::str::from_utf8(&end).unwrap()));
    // The log grows; the next read ends where it now ends.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"---[ end Kernel panic - not syncing: test ]---\n")
        .unwrap();
    let end = storage::read_end(&conn, &pool, &name, 4096)
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&end)
            .ends_with("line 499\n---[ end Kernel panic - not syncing: test ]---\n"),
        "{}",
        String::from_utf8_lossy(&end)
    );
    assert!(storage::delete(&pool, &name).unwrap());
    assert!(!path.exists());
    assert_eq!(
        storage::read_end(&conn, &pool, "vxlab-no-such.log", 4096).unwrap(),
        None
    );
}
