//! Faults a tester provokes: interrupted runs, leftovers, hostile files and names. Needs root
//! and its own /run/netns (run under /work/tools/isolated.sh on a shared machine). Each test
//! names its namespaces `vxlab-f-...` and removes what it made.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

use vxlab::host::netlink::Netlink;
use vxlab::host::netns;

static TEST_PID: AtomicI32 = AtomicI32::new(0);
static MARKER: std::sync::OnceLock<std::ffi::CString> = std::sync::OnceLock::new();

/// Runs when any process of this test binary leaves through `exit`: a forked child that does
/// is what deadlocked `up` (it blocks on locks held by threads that no longer exist).
extern "C" fn exit_path_ran() {
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != TEST_PID.load(Ordering::SeqCst) {
        if let Some(path) = MARKER.get() {
            // SAFETY: a valid NUL-terminated path; open/close are async-signal-safe.
            unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o600);
                libc::close(fd);
            }
        }
    }
}

#[test]
fn namespaces_are_made_and_removed_without_a_child_running_the_exit_path() {
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("child-exited");
    MARKER
        .set(std::ffi::CString::new(marker.to_str().unwrap()).unwrap())
        .unwrap();
    // SAFETY: getpid has no preconditions; atexit takes a function that lives forever.
    unsafe {
        TEST_PID.store(libc::getpid(), Ordering::SeqCst);
        assert_eq!(libc::atexit(exit_path_ran), 0);
    }
    let nl = Netlink::open().unwrap();
    let names: Vec<String> = (0..20).map(|i| format!("vxlab-f-nofork.g{i}")).collect();
    for n in &names {
        nl.add_netns(n).unwrap();
    }
    for n in &names {
        let p = netns::path(n);
        assert!(netns::is_mounted(&p), "{n} is not a namespace");
        // Each is a namespace of its own: its loopback is there and down.
        let out = std::process::Command::new("ip")
            .args(["-n", n, "-j", "link", "show", "lo"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("\"operstate\":\"DOWN\""));
    }
    // Adding again reuses; the calling thread never left the host's namespace.
    nl.add_netns(&names[0]).unwrap();
    assert!(Path::new("/sys/class/net/lo").exists());
    for n in &names {
        assert!(nl.delete_netns(n).unwrap());
        assert!(!netns::path(n).exists());
    }
    assert!(!nl.delete_netns(&names[0]).unwrap());
    assert!(
        !marker.exists(),
        "a child process ran the exit path while namespaces were made"
    );
}

#[test]
fn a_plain_file_left_in_run_netns_is_removed_by_delete_and_adopted_by_add() {
    common::require_root();
    let nl = Netlink::open().unwrap();
    let name = "vxlab-f-plain.g0";
    let p = netns::path(name);
    std::fs::create_dir_all(netns::NETNS_DIR).unwrap();
    std::fs::write(&p, b"").unwrap();
    assert!(nl.delete_netns(name).unwrap());
    assert!(!p.exists());

    std::fs::write(&p, b"").unwrap();
    nl.add_netns(name).unwrap();
    assert!(netns::is_mounted(&p));
    assert!(nl.delete_netns(name).unwrap());
    assert!(!p.exists());
}

#[test]
fn a_lab_whose_namespace_file_was_left_plain_comes_up_and_goes_down() {
    let lab = common::Lab::shipped(
        "two-netns.yaml",
        "f-plain",
        &[("192.168.10.", "192.168.141.")],
    );
    // What an `up` interrupted between creating the mount point and mounting leaves.
    let first = netns::path(&vxlab::plan::instance_name(&lab.name, "vm-a"));
    std::fs::create_dir_all(netns::NETNS_DIR).unwrap();
    std::fs::write(&first, b"").unwrap();
    let (code, r) = lab.up();
    assert_eq!(code, 0, "{:#}", r["failures"]);
    lab.down_leaves_nothing();
}

#[test]
fn names_of_look_alike_labs_differ_and_links_name_their_owner() {
    use vxlab::host::inventory::{self, Presence};
    use vxlab::plan::{host_link_name, instance_name};
    // Lab `f-n` with guest `x-y` and lab `f-n-x` with guest `y` shared `vxlab-f-n-x-y`.
    let a = common::Lab::from_text(&two_guests("f-n", "x-y", "142"));
    let b = common::Lab::from_text(&two_guests("f-n-x", "y", "143"));
    assert_eq!(a.up().0, 0);
    assert_eq!(b.up().0, 0);
    assert_ne!(instance_name("f-n", "x-y"), instance_name("f-n-x", "y"));
    assert_eq!(
        inventory::link(&host_link_name("f-n", 0)),
        Presence::Present {
            owner: Some("lab f-n, guest x-y".into())
        }
    );
    // Taking one down leaves the other whole.
    b.down_leaves_nothing();
    assert!(inventory::namespace(&instance_name("f-n", "x-y")).exists());
    assert_eq!(a.check().0, 0);
    a.down_leaves_nothing();
}

/// A lab named `name` with guests `guest` and `other`, on its own bridge and subnet.
fn two_guests(name: &str, guest: &str, net: &str) -> String {
    format!(
        "name: {name}\ndriver: netns\nunderlay:\n  bridge: vxbr-{name}\n  subnet: 192.168.{net}.0/24\n\
         guests:\n  {guest}: {{ address: 192.168.{net}.2 }}\n  other: {{ address: 192.168.{net}.3 }}\n\
         vxlans:\n  - name: vxlan0\n    vni: 42\n    group: 239.1.1.1\n    addresses:\n\
         \x20     {guest}: 10.{net}.0.2/24\n      other: 10.{net}.0.3/24\n"
    )
}

#[test]
fn capture_and_graph_output_files_never_follow_a_planted_symlink() {
    let lab = common::Lab::shipped(
        "two-netns.yaml",
        "f-out",
        &[("192.168.10.", "192.168.144.")],
    );
    assert_eq!(lab.up().0, 0);
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("root-owned");
    std::fs::write(&victim, "precious").unwrap();
    for (name, args) in [
        ("graph.dot", vec!["graph", lab.file.to_str().unwrap(), "-o"]),
        (
            "cap.pcap",
            vec![
                "capture", "--lab", "f-out", "vm-a", "--count", "1", "--pcap",
            ],
        ),
    ] {
        let out_path = dir.path().join(name);
        std::os::unix::fs::symlink(&victim, &out_path).unwrap();
        let mut argv = args.clone();
        argv.push(out_path.to_str().unwrap());
        let out = lab.run(&argv);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "precious",
            "{name}"
        );
        let meta = std::fs::symlink_metadata(&out_path).unwrap();
        assert!(meta.is_file() && meta.len() > 0, "{name}");
    }
    lab.down_leaves_nothing();
}
