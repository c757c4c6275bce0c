//! Terminals into real virtual machines: the seed lab on two VMs (as `libvirt_lab.rs` brings it
//! up, without an iproute2 build), `vxlab exec` and `vxlab shell` over SSH, and a terminal in
//! the browser into vm-a through the class server. Needs root, a running libvirtd, the
//! debian-12 image (`vxlab image build`), chromium and chromium-driver. Not for the network
//! namespace wrapper: libvirtd plugs the VMs into the host's own network.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::browser::{browser, chromedriver, screenshot, serve, type_in_terminal, wait_for};
use common::{ensure_image, Lab};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_terminal_and_a_shell_into_a_vm() {
    ensure_image();
    let lab = Lab::shipped("two-vm.yaml", "term-vm", &[("192.168.10.", "192.168.19.")]);
    // libvirt's qemu user must traverse the state directory to reach the guests' disks.
    std::fs::set_permissions(lab.state.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, r) = lab.up();
    assert_eq!(code, 0, "{r:#}");

    // exec streams and returns the status over SSH too; -t gives the command a terminal.
    let out = lab.run(&["exec", "vm-b", "sh", "-c", "echo out; echo err >&2; exit 5"]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let out = lab.run(&["exec", "-t", "vm-b", "tty"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("/dev/pts/"));

    // vxlab shell: the prompt names lab and guest, and the exit status comes back.
    let out = lab.typed(&["shell", "vm-a"], "stty size; hostname; exit 4\n");
    let shown = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert_eq!(out.status.code(), Some(4), "{shown}");
    assert!(shown.contains("term-vm/vm-a# "), "{shown}");
    assert!(shown.contains("\nvm-a\n"), "{shown}");

    // The browser terminal on the class server is the same shell.
    let (_server, instructor) = serve(&lab, &[]);
    let base = instructor.split("/t/").next().unwrap().to_string();
    let sheet = lab.run(&["sheet", "term-vm", "--format", "csv", "--url", &base]);
    let sheet = String::from_utf8(sheet.stdout).unwrap();
    let page = sheet
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .nth(2)
        .unwrap()
        .to_string();
    let (_driver, port) = chromedriver();
    let profile = tempfile::tempdir().unwrap();
    let c = browser(port, profile.path()).await;
    c.goto(&page).await.unwrap();
    wait_for(
        &c,
        60,
        "vm-a's prompt in the browser",
        "const r = document.querySelector('#term-vm-a .xterm-rows'); \
         return r !== null && r.innerText.includes('term-vm/vm-a#')",
    )
    .await;
    type_in_terminal(&c, "vm-a", "hostname; ip -br link show vxlan0").await;
    // vm-a's hostname, then the vxlan device as vm-a's own `ip` shows it.
    wait_for(
        &c,
        60,
        "the command's output in vm-a's browser terminal",
        "const r = document.querySelector('#term-vm-a .xterm-rows'); \
         return r !== null && /\\nvm-a\\s*\\nvxlan0\\s+(UP|UNKNOWN)/.test(r.innerText)",
    )
    .await;
    screenshot(&c, "libvirt_class", "vm-terminal.png").await;
    c.close().await.unwrap();
    // The instructor's token outlives the labs on purpose (the instructor's link stays the
    // same from one class to the next); everything else goes with the lab.
    std::fs::remove_file(lab.state.path().join("instructor.token")).unwrap();
    lab.down_leaves_nothing();
}
