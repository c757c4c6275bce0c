//! A class bigger than one host, on this one machine: two hosts simulated honestly as two
//! remote libvirt URIs, each through its own sshd (on 127.0.0.1 and on 127.0.0.2, started by
//! the test with a root key it generates). vxlab treats them as two hosts: one copy of the
//! seed lab on each, guests reached only through their host's sshd, checks, a capture, resets,
//! the serial console and the class server's pages (grid, student page, browser terminal) on
//! h2's copy, a host that cannot be reached, a host lost mid-class, and `down --all` leaving
//! nothing on either. Needs root, a running libvirtd, the debian-12 image, openssh-server and
//! virt-ssh-helper (libvirt-daemon) for libvirt's ssh transport.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::sshd::{free_port, Sshd};
use common::{ensure_image, Lab, Terminal};
use serde_json::Value;

/// The test's lab: labs/two-vm.yaml under a name no other test uses.
const LAB: &str = "mh2vm";
/// The copies' underlays, away from the default pool other tests take theirs from.
const POOL: &str = "10.177.40.0/22";

fn text(o: &Output) -> String {
    use std::os::unix::process::ExitStatusExt;
    format!(
        "exit {:?} signal {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        o.status.signal(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The cell of `hosts check`'s table in row `host`, column `title`: from where the title
/// starts to where the next one does (the last to the end of the line), trimmed. Columns are
/// left-aligned but CPUS and FREE MEM, whose cells end where their titles do.
fn cell(table: &str, host: &str, title: &str) -> String {
    let mut lines = table.lines();
    let head = lines.next().unwrap();
    let row = lines
        .find(|l| l.starts_with(&format!("{host} ")))
        .unwrap_or_else(|| panic!("no row for {host}:\n{table}"));
    let at = head
        .find(title)
        .unwrap_or_else(|| panic!("no column {title}:\n{table}"));
    // The next title: after two spaces, where the next column starts.
    let end = head[at + title.len()..]
        .find(|c: char| c != ' ')
        .map_or(row.len(), |n| at + title.len() + n);
    let start = if matches!(title, "CPUS" | "FREE MEM") {
        // From after the column before it (right-aligned).
        head[..at].trim_end().len()
    } else {
        at
    };
    row.get(start..end.min(row.len()))
        .unwrap_or_else(|| panic!("row {host} is short:\n{table}"))
        .trim()
        .to_string()
}

/// The lines `virsh ARGS` prints, trimmed, blank ones left out.
fn virsh(args: &[&str]) -> Vec<String> {
    let out = common::virsh(args).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Domains, networks and volumes of this test's lab that libvirt holds.
fn in_libvirt() -> Vec<String> {
    let mut left: Vec<String> = virsh(&["list", "--all", "--name"])
        .into_iter()
        .filter(|d| d.starts_with(&format!("vxlab-{LAB}-")))
        .map(|d| format!("domain {d}"))
        .collect();
    left.extend(
        virsh(&["net-list", "--all", "--name"])
            .into_iter()
            .filter(|n| n.starts_with(&format!("vxlab-vxbr-{LAB}")))
            .map(|n| format!("network {n}")),
    );
    let _ = virsh(&["pool-refresh", "vxlab"]);
    left.extend(
        virsh(&["vol-list", "vxlab", "--name"])
            .into_iter()
            .filter(|v| v.starts_with(&format!("vxlab-{LAB}-")))
            .map(|v| format!("volume {v}")),
    );
    left
}

/// `vxlab console` on a guest of `copy`, attached once virsh says so.
fn attach_console(lab: &Lab, copy: &str, guest: &str) -> Terminal {
    // On a terminal, as a student would; the keys go to the guest raw.
    let mut t = Terminal::start(lab, &["console", "--lab", copy, guest]);
    t.wait_for("serial console (domain ");
    t.wait_for("Ctrl-] leaves");
    t
}

/// Waits up to 3 s until no process of this machine (where both hosts' sshds run their
/// commands) captures on `tap`: the tcpdump that `after` started on a host ends with it.
/// (Here the tap carries the guest's SSH sessions, whose next packet would also end a
/// tcpdump left behind; on a quiet link only vxlab's own stop does, which the unit tests of
/// `HostCommand::Capture` show.)
fn no_capture_on(tap: &str, after: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let out = Command::new("pgrep")
            .args(["-af", "tcpdump"])
            .output()
            .unwrap();
        let left: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.split_whitespace().any(|w| w == tap))
            .map(str::to_string)
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a capture on {tap} outlived {after}:\n{}",
            left.join("\n")
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// What the class server's pages show of one copy, and what is known of it.
struct Pages<'a> {
    /// The instructor's grid.
    instructor: &'a str,
    /// The copy's student page.
    student: &'a str,
    copy: &'a str,
    /// vm-a's machine-id.
    machine_id: &'a str,
    /// vm-b's underlay address.
    peer_underlay: &'a str,
    /// vm-a's tap.
    tap: &'a str,
}

/// In a real browser: the copy healthy in the instructor's grid; `break_it` breaks it, and
/// the grid's Check shows it failing with the cause; on the student page vm-a's terminal
/// shows its machine-id, Reset brings the copy back to healthy, and Capture shows the
/// decoded frames (its tcpdump on the host gone once it answered).
fn in_the_browser(p: &Pages, break_it: impl FnOnce()) {
    use common::browser::{browser, chromedriver, click, screenshot, type_in_terminal, wait_for};
    let Pages { copy, .. } = *p;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (_driver, port) = chromedriver();
        let profile = tempfile::tempdir().unwrap();
        let c = browser(port, profile.path()).await;
        let row = format!("document.getElementById('row-{copy}')");
        let result = "document.getElementById('result').innerText";

        // The grid: h2's copy healthy.
        c.goto(p.instructor).await.unwrap();
        wait_for(
            &c,
            60,
            &format!("{copy} healthy in the grid"),
            &format!("const r = {row}; return r !== null && r.classList.contains('healthy')"),
        )
        .await;
        // Broken on h2, then checked from the grid: failing, with the cause.
        break_it();
        click(&c, &format!("button[data-action=check][data-lab=\"{copy}\"]")).await;
        let said = wait_for(
            &c,
            60,
            &format!("the grid's check of {copy}"),
            &format!("const t = {result}; return t.includes('checks failed') ? t : false"),
        )
        .await;
        let said = said.as_str().unwrap();
        assert!(said.contains("vm-a: vxlan0"), "{said}");
        let cause = wait_for(
            &c,
            30,
            &format!("{copy} failing in the grid"),
            &format!(
                "const r = {row}; return r && r.classList.contains('failing') ? r.innerText : false"
            ),
        )
        .await;
        assert!(cause.as_str().unwrap().contains("vm-a: vxlan0"), "{cause}");
        screenshot(&c, "multi_host", "remote-failing.png").await;

        // The student page: vm-a's terminal is h2's vm-a.
        c.goto(p.student).await.unwrap();
        let rows = "document.querySelector('#term-vm-a .xterm-rows')";
        wait_for(
            &c,
            60,
            "vm-a's prompt in the browser",
            &format!(
                "const r = {rows}; return r !== null && r.innerText.includes('{copy}/vm-a#')"
            ),
        )
        .await;
        type_in_terminal(&c, "vm-a", "cat /etc/machine-id").await;
        wait_for(
            &c,
            60,
            "vm-a's machine-id in its browser terminal",
            &format!(
                "const r = {rows}; return r !== null && r.innerText.includes('\\n{}')",
                p.machine_id
            ),
        )
        .await;
        screenshot(&c, "multi_host", "remote-terminal.png").await;
        // Reset the whole lab, through h2: vm-a's link is put back, what both VTEPs learned
        // is forgotten, and it checks again, healthy.
        click(&c, "button[data-action=reset]:not([data-guest])").await;
        let said = wait_for(
            &c,
            120,
            "the student page's reset",
            &format!("const t = {result}; return t.includes('was reset') ? t : false"),
        )
        .await;
        let said = said.as_str().unwrap();
        for ran in [
            "vm-a: $ ip link set up vxlan0",
            "vm-a: $ ip neigh flush dev vxlan0",
            "vm-b: $ ip neigh flush dev vxlan0",
        ] {
            assert!(said.contains(ran), "{said}");
        }
        assert!(said.contains("checks passed"), "{said}");
        // Capture: the flood to the group, and the peer's VTEP.
        click(&c, "button[data-action=capture][data-guest=vm-a]").await;
        let lines = wait_for(
            &c,
            120,
            "the capture's lines",
            "const p = document.querySelector('#result pre.packets'); return p ? p.innerText : false",
        )
        .await;
        let lines = lines.as_str().unwrap();
        assert!(lines.contains("(multicast) udp 4789 vni 42"), "{lines}");
        assert!(lines.contains(p.peer_underlay), "{lines}");
        screenshot(&c, "multi_host", "remote-capture.png").await;
        // The server keeps its connection to h2; the capture's tcpdump there ended anyway.
        no_capture_on(p.tap, "the student page's capture");

        // Back in the grid: healthy again after the student's Reset.
        c.goto(p.instructor).await.unwrap();
        wait_for(
            &c,
            30,
            &format!("{copy} healthy in the grid after its reset"),
            &format!("const r = {row}; return r !== null && r.classList.contains('healthy')"),
        )
        .await;
        c.close().await.unwrap();
    });
}

/// The hosts and the lab; whatever happens, the copies go and the sshds stop.
struct Class {
    lab: Lab,
    sshd: Vec<Sshd>,
    /// Dropped after the sshds have stopped (fields drop in order, after `drop`).
    _jumps_only: JumpsOnly,
}

/// The guests' SSH port is closed to every process of this machine but the hosts' sshds: a
/// cgroup holds the sshds (and every session they fork), and a firewall rule resets any other
/// connection to port 22 in the class's pool. Both hosts are this machine, so without it a
/// connection from vxlab straight to a guest's underlay address would work here and on no
/// real class's hosts; with it, only a tunnel through a host reaches a guest.
struct JumpsOnly {
    cgroup: std::path::PathBuf,
    rule: Vec<String>,
}

impl JumpsOnly {
    fn new(subnet: &str) -> JumpsOnly {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let root = mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(2) == Some(&"cgroup2"))
            .map(|f| f[1].to_string())
            .expect("no cgroup2 hierarchy is mounted (the test confines its sshds in one)");
        // What a run killed before its drop left: its rule would reset every tunnel of this
        // run's sshds (they are not in its cgroup).
        common::sh(
            "iptables -S OUTPUT | grep -F 'vxlab-test: jumps only' | sed 's/^-A/-D/' | \
             while read -r rule; do eval \"iptables -w $rule\"; done",
        );
        for old in std::fs::read_dir(&root).unwrap().flatten() {
            if old
                .file_name()
                .to_string_lossy()
                .starts_with("vxlab-test-jumps-")
            {
                let _ = std::fs::remove_dir(old.path());
            }
        }
        let name = format!("vxlab-test-jumps-{}", std::process::id());
        let cgroup = Path::new(&root).join(&name);
        std::fs::create_dir_all(&cgroup).unwrap();
        let rule: Vec<String> = [
            "OUTPUT",
            "-d",
            subnet,
            "-p",
            "tcp",
            "--dport",
            "22",
            "-m",
            "cgroup",
            "!",
            "--path",
            &name,
            "-m",
            "comment",
            "--comment",
            "vxlab-test: jumps only",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        let jumps = JumpsOnly { cgroup, rule };
        let ok = Command::new("iptables")
            .arg("-I")
            .args(&jumps.rule)
            .status()
            .unwrap()
            .success();
        assert!(ok, "iptables -I {:?} failed", jumps.rule);
        jumps
    }
}

impl Drop for JumpsOnly {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::FileExt;
        let _ = Command::new("iptables").arg("-D").args(&self.rule).status();
        // Killed sessions leave the cgroup as they exit. Its cgroup.events says when none is
        // left ("populated 0"), and the kernel wakes a poll on it at each change (reading it
        // through the same descriptor takes the change in).
        if let Ok(events) = std::fs::File::open(self.cgroup.join("cgroup.events")) {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let mut text = [0u8; 256];
            while std::time::Instant::now() < deadline {
                let n = events.read_at(&mut text, 0).unwrap_or(0);
                if String::from_utf8_lossy(&text[..n]).contains("populated 0") {
                    break;
                }
                let mut pfd = libc::pollfd {
                    fd: events.as_raw_fd(),
                    events: libc::POLLPRI,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 1000) };
            }
        }
        if let Err(e) = std::fs::remove_dir(&self.cgroup) {
            eprintln!("cgroup {} is left: {e}", self.cgroup.display());
        }
    }
}

impl Drop for Class {
    fn drop(&mut self) {
        // A host taken away by the test comes back so `down` reaches it.
        for s in &mut self.sshd {
            s.stop();
            s.restart();
        }
        let _ = self.lab.run(&["down", LAB, "--all"]);
    }
}

/// One byte of a file, changed until dropped (the file keeps its size).
struct ChangedByte {
    path: std::path::PathBuf,
    offset: u64,
    was: u8,
}

impl ChangedByte {
    fn at(path: &Path, offset: u64) -> ChangedByte {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, offset).unwrap();
        f.write_all_at(&[!b[0]], offset).unwrap();
        ChangedByte {
            path: path.to_path_buf(),
            offset,
            was: b[0],
        }
    }
}

impl Drop for ChangedByte {
    fn drop(&mut self) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .unwrap();
        f.write_all_at(&[self.was], self.offset).unwrap();
    }
}

/// An inventory of `hosts` (name, address) on `port`. The sshds' host keys are new in every
/// run: vxlab's own connections and `vxlab ssh` check them against the test's known hosts
/// file; libvirt's ssh transport (which reads only root's) is told not to check.
fn inventory(dir: &Path, name: &str, hosts: &[(&str, &str)], port: u16) -> String {
    let key = dir.join("client");
    let known = dir.join("known_hosts");
    let mut yaml = String::from("hosts:\n");
    for (h, addr) in hosts {
        yaml.push_str(&format!(
            "  - name: {h}\n    uri: qemu+ssh://root@{addr}:{port}/system?keyfile={}&known_hosts={}&no_verify=1\n",
            key.display(),
            known.display()
        ));
    }
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn a_class_on_two_hosts_through_their_libvirt_and_sshd() {
    ensure_image();
    for p in ["/usr/bin/virt-ssh-helper", "/usr/sbin/sshd"] {
        assert!(Path::new(p).exists(), "{p} is missing");
    }
    let keys = tempfile::tempdir().unwrap();
    let port = free_port();
    let jumps_only = JumpsOnly::new(POOL);
    let mut h1 = Sshd::start(keys.path(), "127.0.0.1".parse().unwrap(), Some(port));
    let mut h2 = Sshd::start(keys.path(), "127.0.0.2".parse().unwrap(), Some(port));
    h1.confine(&jumps_only.cgroup);
    h2.confine(&jumps_only.cgroup);
    let mut class = Class {
        lab: Lab::shipped("two-vm.yaml", LAB, &[]),
        sshd: vec![h1, h2],
        _jumps_only: jumps_only,
    };
    let lab_file = class.lab.file.to_string_lossy().into_owned();
    let known: String = class.sshd.iter().map(Sshd::known_hosts_line).collect();
    std::fs::write(keys.path().join("known_hosts"), known).unwrap();
    let hosts = inventory(
        keys.path(),
        "hosts.yaml",
        &[("h1", "127.0.0.1"), ("h2", "127.0.0.2")],
        port,
    );

    // A bad inventory is refused naming file, line and field.
    let bad = keys.path().join("bad.yaml");
    std::fs::write(&bad, "hosts:\n  - name: H_1\n    uri: qemu:///system\n").unwrap();
    let out = class.lab.run(&[
        "up",
        &lab_file,
        "--count",
        "2",
        "--pool",
        POOL,
        "--hosts",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("bad.yaml:2:") && said.contains("hosts[0].name"),
        "{said}"
    );
    assert!(
        said.contains("bad.yaml:3:") && said.contains("hosts[0].uri"),
        "{said}"
    );

    // The image goes to the hosts as storage volumes, checked by checksum (a host that had
    // it is left as it is).
    let out = class.lab.run(&["hosts", "prepare", &hosts]);
    assert!(out.status.success(), "{}", text(&out));

    // An image changed on the hosts but kept at its size is refused by `up` as by `hosts
    // check`: by checksum. One byte of the initrd volume is changed (both hosts are this
    // machine's libvirt, so both see it); `hosts prepare` then uploads it again.
    {
        let path = virsh(&["vol-path", "--pool", "vxlab", "debian-12.initrd.img"]);
        let changed = ChangedByte::at(Path::new(&path[0]), 4096);
        let out = class.lab.run(&[
            "up", &lab_file, "--count", "2", "--pool", POOL, "--hosts", &hosts,
        ]);
        assert_eq!(out.status.code(), Some(69), "{}", text(&out));
        let said = String::from_utf8_lossy(&out.stderr);
        for h in ["h1", "h2"] {
            assert!(
                said.contains(&format!(
                    "  {h}: the image is not there as vxlab needs it (DIFFERS: \
                     debian-12.initrd.img); run `vxlab hosts prepare`"
                )),
                "{said}"
            );
        }
        assert!(said.contains("nothing was created on any host"), "{said}");
        assert_eq!(in_libvirt(), Vec::<String>::new());
        assert_eq!(class.lab.leftovers(), Vec::<String>::new());
        // The table says so, each column as wide as its widest cell.
        let out = class.lab.run(&["hosts", "check", &hosts]);
        assert_eq!(out.status.code(), Some(69), "{}", text(&out));
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        for h in ["h1", "h2"] {
            assert_eq!(
                cell(&table, h, "IMAGE"),
                "DIFFERS: debian-12.initrd.img",
                "{table}"
            );
            assert_eq!(cell(&table, h, "PROGRAMS"), "all present", "{table}");
        }
        // prepare uploads the file that differs through h1's libvirt (one host at a time:
        // h2, the same machine's libvirt, then has it), saying how far it got as it goes.
        let out = class.lab.run(&["hosts", "prepare", &hosts]);
        assert!(out.status.success(), "{}", text(&out));
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = |h: &str| {
            said.lines()
                .find(|l| l.starts_with(&format!("{h} ")))
                .unwrap_or_else(|| panic!("no line for {h}: {}", text(&out)))
                .to_string()
        };
        assert!(
            line("h1").contains("image uploaded (") && line("h1").ends_with(" MiB), same checksum"),
            "{}",
            text(&out)
        );
        assert!(
            line("h2").contains("image already there, same checksum"),
            "{}",
            text(&out)
        );
        let progress = String::from_utf8_lossy(&out.stderr);
        assert!(
            progress.contains("h1: debian-12.initrd.img 100% ("),
            "{}",
            text(&out)
        );
        // The uploaded file is a new volume: the byte written back is the one it holds.
        drop(changed);
    }
    let out = class
        .lab
        .run(&["hosts", "check", &hosts, "--lab", &lab_file]);
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    // Both hosts are this machine: its libvirt's version and CPUs, and /dev/kvm as it is here
    // (usable by the QEMU user, or none); the accelerator one of the two.
    let version = Command::new("libvirtd").arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout)
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    let cpus = virsh(&["nodeinfo"])
        .iter()
        .find_map(|l| l.strip_prefix("CPU(s):").map(|n| n.trim().to_string()))
        .unwrap();
    let kvm = if Path::new("/dev/kvm").exists() {
        "usable"
    } else {
        "none"
    };
    for h in ["h1", "h2"] {
        assert_eq!(cell(&table, h, "LIBVIRT"), version, "{table}");
        assert_eq!(cell(&table, h, "CPUS"), cpus, "{table}");
        let accel = cell(&table, h, "ACCEL");
        assert!(accel == "kvm" || accel == "tcg", "{table}");
        assert_eq!(cell(&table, h, "/DEV/KVM"), kvm, "{table}");
        assert!(kvm == "usable" || accel == "tcg", "{table}");
        assert_eq!(cell(&table, h, "IMAGE"), "same checksum", "{table}");
        assert_eq!(cell(&table, h, "PROGRAMS"), "all present", "{table}");
        assert!(
            cell(&table, h, &format!("COPIES OF {LAB}")).contains("MiB each"),
            "{table}"
        );
    }

    // A third host where no sshd listens is named, with why, before anything is created.
    let three = inventory(
        keys.path(),
        "three.yaml",
        &[
            ("h1", "127.0.0.1"),
            ("h2", "127.0.0.2"),
            ("h3", "127.0.0.3"),
        ],
        port,
    );
    let out = class.lab.run(&[
        "up", &lab_file, "--count", "3", "--pool", POOL, "--hosts", &three,
    ]);
    assert_eq!(out.status.code(), Some(69), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("1 of the 3 hosts"), "{said}");
    assert!(
        said.contains("host h3 (qemu+ssh://root@127.0.0.3"),
        "{said}"
    );
    assert!(said.contains("refused"), "{said}");
    assert!(
        !said.contains("host h1 (") && !said.contains("host h2 ("),
        "{said}"
    );
    assert_eq!(in_libvirt(), Vec::<String>::new());
    assert_eq!(class.lab.leftovers(), Vec::<String>::new());
    // hosts check shows it in its row, and exits 69.
    let out = class.lab.run(&["hosts", "check", &three]);
    assert_eq!(out.status.code(), Some(69), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("h3") && l.contains("UNREACHABLE")),
        "{table}"
    );
    assert!(
        table.contains("not ready:\n  h3: cannot be reached"),
        "{table}"
    );
    // The same facts as JSON, for a script: h1 and h2 ready, with room for copies of the
    // lab; h3 not reachable, and why.
    let out = class
        .lab
        .run(&["hosts", "check", &three, "--lab", &lab_file, "--json"]);
    assert_eq!(out.status.code(), Some(69), "{}", text(&out));
    let facts: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = facts["hosts"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|h| h["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["h1", "h2", "h3"]);
    for h in &rows[..2] {
        assert_eq!(h["ready"], true, "{h}");
        assert_eq!(h["image"]["state"], "same-checksum", "{h}");
        assert!(h["copies_fit"].as_u64().unwrap() >= 1, "{h}");
        assert!(h["copies_served_by_cores"].as_u64().unwrap() >= 1, "{h}");
    }
    assert_eq!(rows[2]["reachable"], false);
    assert!(
        rows[2]["blocker"]
            .as_str()
            .unwrap()
            .starts_with("cannot be reached"),
        "{}",
        rows[2]
    );

    // A class bigger than both hosts is refused with what would fit, nothing created.
    let out = class.lab.run(&[
        "up",
        &lab_file,
        "--count",
        "250",
        "--pool",
        "10.177.0.0/16",
        "--hosts",
        &hosts,
    ]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("250 new copies do not fit on these hosts: h1 takes "),
        "{said}"
    );
    assert!(
        said.contains("or fewer, or add hosts to the inventory; nothing was created"),
        "{said}"
    );
    assert_eq!(in_libvirt(), Vec::<String>::new());
    assert_eq!(class.lab.leftovers(), Vec::<String>::new());

    // plan shows the placement, and nothing is created; the inventory from VXLAB_HOSTS.
    let out = class
        .lab
        .vxlab()
        .env("VXLAB_HOSTS", &hosts)
        .args(["plan", &lab_file, "--count", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let plan = String::from_utf8_lossy(&out.stdout);
    // Each copy placed on one of the hosts, one on each.
    let placed: Vec<&str> = ["1", "2"]
        .iter()
        .map(|copy| {
            let line = plan
                .lines()
                .find(|l| l.starts_with(&format!("{LAB}-{copy} ")))
                .unwrap_or_else(|| panic!("copy {copy} is not placed: {plan}"));
            line.split_whitespace().last().unwrap()
        })
        .collect();
    assert!(placed == ["h1", "h2"] || placed == ["h2", "h1"], "{plan}");
    assert!(plan.contains("copies per host: h1: 1, h2: 1"), "{plan}");
    assert_eq!(in_libvirt(), Vec::<String>::new());

    // The class: one copy on each host, each checked.
    let logged_before: Vec<usize> = class.sshd.iter().map(|s| s.log().len()).collect();
    let out = class.lab.run(&[
        "up",
        &lab_file,
        "--count",
        "2",
        "--pool",
        POOL,
        "--hosts",
        &hosts,
        "--json",
        "--timings",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let logged_after: Vec<usize> = class.sshd.iter().map(|s| s.log().len()).collect();
    let reports: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reports.as_array().unwrap().len(), 2);
    // One copy on each host; which one goes where is placement's choice (the room each host
    // reports at that moment), so the rest of the test asks.
    let status = class.lab.run(&["status", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let host_of = |copy: &str| {
        status["labs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["lab"] == copy)
            .unwrap_or_else(|| panic!("{copy} not in status: {status}"))["host"]
            .clone()
    };
    let (n1, n2) = if host_of(&format!("{LAB}-1")) == "h1" {
        ("1", "2")
    } else {
        ("2", "1")
    };
    // The copies on h1 and on h2.
    let (c1, c2) = (format!("{LAB}-{n1}"), format!("{LAB}-{n2}"));
    assert_eq!(host_of(&c1), "h1");
    assert_eq!(host_of(&c2), "h2");
    // Each host fenced its copy's bridge off from itself (h2's rules went in over its SSH
    // connection; both hosts are this machine, so its tables show both).
    for c in [&c1, &c2] {
        assert_eq!(common::fence_rules(c).len(), common::fence_size(), "{c}");
    }
    // Where the time went, per copy's guest, with the boot stages each host's console
    // showed (read through that host's libvirt).
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    for (copy, host) in [(n1, "h1"), (n2, "h2")] {
        for g in ["vm-a", "vm-b"] {
            let name = format!("{LAB}-{copy}/{g} ");
            assert!(
                said.lines()
                    .any(|l| l.starts_with(&name) && l.contains(&format!(" on {host} "))),
                "no boot stage on {host} for {name}in the timings:\n{said}"
            );
        }
    }
    assert!(
        said.contains(&format!("2 copies of lab {LAB} up and checked")),
        "{said}"
    );
    // Each host's queue said what started there, what waited, and when each was done.
    for (c, h) in [(&c1, "h1"), (&c2, "h2")] {
        for line in [
            format!("starting {c} on {h}; queued on {h}: none"),
            format!("{c} on {h} up and checked after"),
        ] {
            assert!(said.contains(&line), "no `{line}` in:\n{said}");
        }
    }
    let table = class.lab.run(&["status"]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.lines().next().unwrap().contains(" HOST "), "{table}");

    // Each copy's bridge is a libvirt network on its host, its disks volumes there.
    let nets = virsh(&["net-list", "--name"]);
    for copy in ["1", "2"] {
        assert!(
            nets.contains(&format!("vxlab-vxbr-{LAB}-{copy}")),
            "{nets:?}"
        );
    }
    // Guest SSH went through each copy's own host: its sshd opened the tunnels to that
    // copy's guests, and to no other copy's.
    let addr = |copy: &str, guest: &str| -> String {
        let r = reports
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["lab"] == format!("{LAB}-{copy}"))
            .unwrap();
        common::guest(r, guest)["underlay"]
            .as_str()
            .unwrap_or_else(|| panic!("no underlay address in {r}"))
            .split('/')
            .next()
            .unwrap()
            .to_string()
    };
    for (i, own, other) in [(0, n1, n2), (1, n2, n1)] {
        let log = class.sshd[i].log();
        // libvirt's own transport logged in to this host during up (OpenSSH's client; vxlab's
        // connection is libssh2's): the copy's libvirt calls went over this host's URI.
        let during_up = &log[logged_before[i]..logged_after[i]];
        assert!(
            during_up.contains("remote software version OpenSSH"),
            "libvirt never connected through host h{}'s sshd during up",
            i + 1
        );
        // vxlab logged in to each host once, and every guest on it went through that one
        // connection.
        assert_eq!(
            during_up.matches("remote software version libssh2").count(),
            1,
            "vxlab's connections to host h{} during up:\n{during_up}",
            i + 1
        );
        for g in ["vm-a", "vm-b"] {
            let mine = format!("target {} port 22", addr(own, g));
            let theirs = format!("target {} port 22", addr(other, g));
            assert!(
                log.contains(&mine),
                "host h{}'s sshd opened no tunnel to {mine}",
                i + 1
            );
            assert!(
                !log.contains(&theirs),
                "host h{}'s sshd carried {theirs}",
                i + 1
            );
        }
    }

    // Nothing but a host's sshd reaches a guest's SSH port: straight from here it is closed.
    for copy in [n1, n2] {
        for g in ["vm-a", "vm-b"] {
            let to: std::net::SocketAddr = format!("{}:22", addr(copy, g)).parse().unwrap();
            let direct =
                std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(5));
            assert_eq!(
                direct.map_err(|e| e.kind()).err(),
                Some(std::io::ErrorKind::ConnectionRefused),
                "{to} answered outside its host's sshd"
            );
        }
    }

    // check passes on both.
    let out = class.lab.run(&["check", LAB, "--all"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let lines = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(lines.matches("checks passed").count(), 2, "{lines}");

    // exec and show on the copy on h2.
    let out = class.lab.run(&["exec", "--lab", &c2, "vm-b", "hostname"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "vm-b\n",
        "{}",
        text(&out)
    );
    let out = class
        .lab
        .run(&["show", "--lab", &c2, "vm-a", "maddr", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("239.1.1.1"),
        "{}",
        text(&out)
    );

    // vxlab ssh reaches h2's guest through h2's sshd (a ProxyCommand), its key pinned.
    let out = class
        .lab
        .typed(&["ssh", "--lab", &c2, "vm-a"], "hostname\n");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "vm-a\n",
        "{}",
        text(&out)
    );

    // vxlab shell on h2's guest: the students' shell, its exit status back.
    let out = class
        .lab
        .typed(&["shell", "--lab", &c2, "vm-b"], "hostname; exit 4\n");
    let shown = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(shown.contains(&format!("{c2}/vm-b# ")), "{shown}");
    // The hostname's own line (after the terminal's bracketed-paste switch).
    assert!(
        shown
            .lines()
            .any(|l| l.ends_with("vm-b") && !l.contains('#')),
        "{shown}"
    );

    // vxlab console on h2's guest: the serial console, streamed by h2's libvirt; what the
    // guest writes to its serial port shows in it.
    // vxlab says it is connected as the stream opens, a moment before the guest's line may
    // be written: the guest writes it again every two seconds until it shows.
    let mut console = attach_console(&class.lab, &c2, "vm-a");
    let marker = "vxlab-console-on-h2";
    let out = class.lab.run(&[
        "exec",
        "--lab",
        &c2,
        "vm-a",
        "sh",
        "-c",
        &format!(
            "nohup sh -c 'for i in $(seq 30); do echo {marker} > /dev/ttyS0; sleep 2; done' \
             >/dev/null 2>&1 &"
        ),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    console.wait_for(marker);
    // Ctrl-] leaves the console; vxlab exits 0.
    console.send(&[0x1d]);
    let status = console.wait();
    assert!(status.success(), "console: {status}\n{}", console.output());

    // The class server shows h2's copy as any other: healthy in the grid, failing with its
    // cause once broken, back to healthy after its student page's Reset; the student's
    // terminal reaches h2's guest, and Capture decodes what crossed its tap.
    let (server, instructor) = common::browser::serve(&class.lab, &[]);
    let base = instructor.split("/t/").next().unwrap().to_string();
    let sheet = class
        .lab
        .run(&["sheet", LAB, "--format", "csv", "--url", &base]);
    assert!(sheet.status.success(), "{}", text(&sheet));
    let sheet = String::from_utf8(sheet.stdout).unwrap();
    let student = sheet
        .lines()
        .find(|l| l.split(',').nth(1) == Some(c2.as_str()))
        .unwrap_or_else(|| panic!("no card for {c2}: {sheet}"))
        .split(',')
        .nth(2)
        .unwrap()
        .to_string();
    // The terminal reached h2's vm-a itself: its machine-id (one per guest), not h1's.
    let machine_id = |copy: &str| {
        let out = class
            .lab
            .run(&["exec", "--lab", copy, "vm-a", "cat", "/etc/machine-id"]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (on_h1, on_h2) = (machine_id(&c1), machine_id(&c2));
    assert_ne!(on_h1, on_h2);
    // vm-a's tap on h2, where its captures run.
    let tap = vxlab::plan::host_link_name(&c2, 0);
    in_the_browser(
        &Pages {
            instructor: &instructor,
            student: &student,
            copy: &c2,
            machine_id: &on_h2,
            peer_underlay: &addr(n2, "vm-b"),
            tap: &tap,
        },
        || {
            class
                .lab
                .exec(Some(&c2), "vm-a", &["ip", "link", "set", "vxlan0", "down"]);
        },
    );
    drop(server);
    // The instructor's token outlives the labs on purpose (see libvirt_class.rs).
    std::fs::remove_file(class.lab.state.path().join("instructor.token")).unwrap();

    // A capture on h2's copy: the tap's frames come back over h2's connection and are
    // decoded here, as a capture on this machine: the pings answered, the first ARP request
    // flooded to the group, everything after it unicast between the VTEPs.
    let out = class.lab.run(&["capture", "--lab", &c2, "vm-a", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let c: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["answered"], true, "{c:#}");
    let packets = common::capture_packets(&c);
    let first = packets
        .first()
        .unwrap_or_else(|| panic!("no packet: {c:#}"));
    assert_eq!(first["inner"]["kind"], "arp_request", "{c:#}");
    assert_eq!(first["inner"]["target"], "192.168.42.3", "{c:#}");
    assert_eq!(first["outer_src"], addr(n2, "vm-a"), "{c:#}");
    assert_eq!(first["outer_dst"], "239.1.1.1", "{c:#}");
    assert_eq!(first["multicast"], true, "{c:#}");
    let reply = packets
        .iter()
        .find(|p| p["inner"]["kind"] == "arp_reply")
        .unwrap_or_else(|| panic!("no ARP reply: {c:#}"));
    assert_eq!(reply["outer_src"], addr(n2, "vm-b"), "{c:#}");
    assert_eq!(reply["outer_dst"], addr(n2, "vm-a"), "{c:#}");
    let echoes = packets
        .iter()
        .filter(|p| p["inner"]["kind"] == "echo")
        .count();
    assert_eq!(echoes, 6, "3 requests and 3 replies: {c:#}");
    assert!(
        packets[1..].iter().all(|p| p["multicast"] == false),
        "{c:#}"
    );
    assert!(packets.iter().all(|p| p["vni"] == 42), "{c:#}");
    // tcpdump on h2 ended with the capture.
    no_capture_on(&tap, "`vxlab capture`");

    // One guest reset on h2's copy: vm-a, broken again, is put back, vm-b is not touched,
    // and the copy checks again. (The whole copy's reset was the student page's.)
    class
        .lab
        .exec(Some(&c2), "vm-a", &["ip", "link", "set", "vxlan0", "down"]);
    let out = class.lab.run(&["reset", &c2, "vm-a", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ran = common::repairs(&serde_json::from_slice(&out.stdout).unwrap());
    assert!(
        ran.contains(&"vm-a: ip link set up vxlan0".to_string()),
        "{ran:?}"
    );
    assert!(ran.iter().all(|r| r.starts_with("vm-a: ")), "{ran:?}");
    let out = class.lab.run(&["check", &c2]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // h2's sshd goes away mid-class: check names the host, not the guests.
    class.sshd[1].stop();
    let out = class.lab.run(&["check", &c2]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(said.contains("host h2"), "{said}");
    assert!(!said.contains("vm-a") && !said.contains("vm-b"), "{said}");
    // The copy on h1 is still checked.
    let out = class.lab.run(&["check", &c1]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Back again, down --all removes everything on both hosts.
    class.sshd[1].restart();
    let out = class.lab.run(&["down", LAB, "--all"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(in_libvirt(), Vec::<String>::new());
    assert_eq!(class.lab.leftovers(), Vec::<String>::new());
    for c in [&c1, &c2] {
        assert_eq!(common::fence_rules(c), Vec::<String>::new(), "{c}");
    }

    // A host lost in the middle of up fails only its copies, and down removes what was made
    // there once it is back.
    let up = class
        .lab
        .vxlab()
        .args([
            "up", &lab_file, "--count", "2", "--pool", POOL, "--hosts", &hosts,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The copy placed on h2 this time (its state records the host), once it made its bridge.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let on_h2 = |copy: &str| {
        std::fs::read_to_string(class.lab.state.path().join(copy).join("state.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .is_some_and(|st| st["host"]["name"] == "h2")
    };
    let (n1, n2) = loop {
        let nets = virsh(&["net-list", "--all", "--name"]);
        let made = |n: &str| nets.contains(&format!("vxlab-vxbr-{LAB}-{n}"));
        if on_h2(&format!("{LAB}-2")) && made("2") {
            break ("1", "2");
        }
        if on_h2(&format!("{LAB}-1")) && made("1") {
            break ("2", "1");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "h2's copy never made its bridge"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    class.sshd[1].stop();
    let out = up.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(70), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(said.contains(&format!("{LAB}-{n2}: ")), "{said}");
    assert!(said.contains("1 of 2 copies"), "{said}");
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with(&format!("{LAB}-{n1} ")) && l.contains("checks passed")),
        "{shown}"
    );
    assert!(!in_libvirt().is_empty());
    class.sshd[1].restart();
    let out = class.lab.run(&["down", LAB, "--all"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(in_libvirt(), Vec::<String>::new());
    assert_eq!(class.lab.leftovers(), Vec::<String>::new());
}
