//! A lab broken the way students break it, on real namespaces: `check` names the guest, the
//! layer and the fix, cause first; `up` (or `reset`) puts the kernel back to the plan exactly,
//! running nothing on a healthy lab; `status` never calls a failing lab healthy.

mod common;

use std::process::Command;

use common::{fdb_dst, repairs, vtep, Lab, Terminal};
use serde_json::Value;

/// Runs `ip ARGS` (or `bridge`) inside a guest of `lab`, as a student at its shell would.
fn student(lab: &Lab, guest: &str, argv: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("vxlab-{}.{guest}", lab.name)])
        .args(argv)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Changes `guest`'s address on `dev` from `from` to `to` by hand, as a student would.
fn readdress(lab: &Lab, guest: &str, dev: &str, from: &str, to: &str) {
    student(lab, guest, &["ip", "addr", "del", from, "dev", dev]);
    student(lab, guest, &["ip", "addr", "add", to, "dev", dev]);
}

/// Runs `ip ARGS` on the host, which must succeed: what breaks the lab outside its guests.
fn on_host(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether one of a report's notes says every one of `parts`.
fn noted(report: &Value, parts: &[&str]) -> bool {
    report["notes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .any(|n| parts.iter().all(|p| n.contains(p)))
}

/// What `ip -j ARGS` prints in a guest, parsed.
fn kernel(lab: &Lab, guest: &str, argv: &[&str]) -> Value {
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("vxlab-{}.{guest}", lab.name)])
        .args(argv)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// The addresses on `dev` in `guest`, as the kernel lists them (global ones only).
fn addresses(lab: &Lab, guest: &str, dev: &str) -> Vec<String> {
    kernel(lab, guest, &["ip", "-j", "addr", "show", "dev", dev])[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// The groups the kernel lists as joined on `guest`'s eth0.
fn joined(lab: &Lab, guest: &str) -> Vec<String> {
    kernel(lab, guest, &["ip", "-j", "maddr", "show", "dev", "eth0"])[0]["maddr"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|a| a["address"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The routes in `guest`'s main table, as `ip route show` writes them.
fn routes(lab: &Lab, guest: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args([
            "-n",
            &format!("vxlab-{}.{guest}", lab.name),
            "route",
            "show",
        ])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split(" proto").next().unwrap().trim().to_string())
        .collect()
}

/// The causes `check` reports: (guest, layer, what).
fn causes(report: &Value) -> Vec<(String, String, String)> {
    report["diagnoses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let c = &d["cause"];
            (
                c["guest"].as_str().unwrap().to_string(),
                c["layer"].as_str().unwrap().to_string(),
                c["what"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// vm-a's moved underlay address is the first cause, and no other guest is a cause: the
/// peers' symptoms are grouped under it.
fn only_vm_a_underlay_is_the_cause(report: &Value) {
    let all = causes(report);
    assert_eq!(
        all[0],
        (
            "vm-a".into(),
            "underlay_address".into(),
            "eth0 address".into()
        ),
        "{all:?}"
    );
    assert!(
        all.iter().all(|(g, _, _)| g == "vm-a"),
        "another guest is a cause: {all:?}"
    );
}

/// Where `guest`'s flood entries on vxlan0 send to, sorted.
fn flood_dsts(lab: &Lab, guest: &str) -> Vec<String> {
    let mut floods: Vec<String> = kernel(
        lab,
        guest,
        &["bridge", "-j", "fdb", "show", "dev", "vxlan0"],
    )
    .as_array()
    .unwrap()
    .iter()
    .filter(|e| e["mac"] == "00:00:00:00:00:00")
    .map(|e| e["dst"].as_str().unwrap().to_string())
    .collect();
    floods.sort();
    floods
}

/// The static-FDB lab up as `name` on underlay `subnet` (`192.168.N.`), and its report.
fn static_up(name: &str, subnet: &str) -> (Lab, Value) {
    let st = Lab::shipped("static.yaml", name, &[("192.168.60.", subnet)]);
    let (code, r) = st.up();
    assert_eq!(code, 0, "{:#}", r["failures"]);
    (st, r)
}

fn first_cause(report: &Value) -> &Value {
    &report["diagnoses"][0]["cause"]
}

/// What `vxlab status --json` says.
fn status_of(lab: &Lab) -> Value {
    serde_json::from_slice(&lab.run(&["status", "--json"]).stdout).unwrap()
}

/// `up` by the lab's name (a running lab), as JSON.
fn up_again(lab: &Lab) -> (i32, Value) {
    let out = lab.run(&["up", "--json", &lab.name]);
    let code = out.status.code().unwrap_or(-1);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "up printed no report: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, json)
}

fn seed(name: &str, subnet: &str) -> Lab {
    let lab = Lab::shipped("two-netns.yaml", name, &[("192.168.10.", subnet)]);
    let (code, r) = lab.up();
    assert_eq!(code, 0, "{:#}", r["failures"]);
    lab
}

#[test]
fn a_flushed_fdb_is_named_and_up_puts_the_flood_entry_back() {
    let lab = seed("t-r-fdb", "192.168.71.");
    student(&lab, "vm-a", &["bridge", "fdb", "flush", "dev", "vxlan0"]);
    let (code, r) = lab.check();
    assert_eq!(code, 1);
    let c = first_cause(&r);
    assert_eq!(c["guest"], "vm-a");
    assert_eq!(c["layer"], "flooding");
    assert_eq!(c["kind"], "flood_entry");
    assert_eq!(
        c["fix"]["commands"][0],
        "bridge fdb append 00:00:00:00:00:00 dev vxlan0 dst 239.1.1.1 via eth0"
    );

    // Someone planted a link where vxlab logs the commands it runs in vm-a: the repair is
    // logged beside it, never through it.
    let elsewhere = tempfile::tempdir().unwrap();
    let victim = elsewhere.path().join("victim");
    std::fs::write(&victim, "root's file\n").unwrap();
    let log = lab.state.path().join(&lab.name).join("commands-vm-a.log");
    std::fs::remove_file(&log).unwrap();
    std::os::unix::fs::symlink(&victim, &log).unwrap();

    let (code, r) = up_again(&lab);
    assert_eq!(code, 0, "{:#}", r["failures"]);
    assert_eq!(
        repairs(&r),
        ["vm-a: bridge fdb append 00:00:00:00:00:00 dev vxlan0 dst 239.1.1.1 via eth0"]
    );
    assert_eq!(
        fdb_dst(&r, "vm-a", "vxlan0", &Value::from("00:00:00:00:00:00")).as_deref(),
        Some("239.1.1.1")
    );
    // The kernel's own table has the flood entry back, through eth0.
    let fdb = kernel(
        &lab,
        "vm-a",
        &["bridge", "-j", "fdb", "show", "dev", "vxlan0"],
    );
    assert!(
        fdb.as_array()
            .unwrap()
            .iter()
            .any(|e| e["mac"] == "00:00:00:00:00:00"
                && e["dst"] == "239.1.1.1"
                && e["state"] == "permanent"),
        "{fdb:#}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's file\n");
    lab.down_leaves_nothing();
}

#[test]
fn a_changed_overlay_address_is_flagged_and_up_leaves_only_the_planned_one() {
    let lab = seed("t-r-ovl", "192.168.72.");
    readdress(
        &lab,
        "vm-b",
        "vxlan0",
        "192.168.42.3/24",
        "192.168.42.33/24",
    );
    let (code, r) = lab.check();
    assert_eq!(code, 1);
    let c = first_cause(&r);
    assert_eq!(
        (c["guest"].as_str(), c["layer"].as_str()),
        (Some("vm-b"), Some("overlay_address"))
    );
    assert!(r["failures"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["kind"] == "extra_address" && f["seen"] == "192.168.42.33/24"));

    // The fix takes the wrong address off and puts the planned one on, in that order.
    assert_eq!(
        first_cause(&r)["fix"]["commands"],
        serde_json::json!([
            "ip addr del 192.168.42.33/24 dev vxlan0",
            "ip addr add 192.168.42.3/24 dev vxlan0"
        ])
    );
    // What the instructor reads: why, then the commands that ran.
    let out = lab.run(&["up", &lab.name]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(
            "vm-b: vxlan0 address: expected 192.168.42.3/24, seen 192.168.42.33/24\n  \
             $ ip addr del 192.168.42.33/24 dev vxlan0\n  $ ip addr add 192.168.42.3/24 dev vxlan0\n"
        ),
        "{text}"
    );
    assert_eq!(addresses(&lab, "vm-b", "vxlan0"), ["192.168.42.3/24"]);
    assert_eq!(lab.check().0, 0);
    lab.down_leaves_nothing();
}

#[test]
fn a_downed_underlay_is_the_cause_with_its_command_and_up_brings_it_up() {
    let lab = seed("t-r-down", "192.168.73.");
    student(&lab, "vm-a", &["ip", "link", "set", "eth0", "down"]);
    let (code, r) = lab.check();
    assert_eq!(code, 1);
    assert_eq!(
        causes(&r),
        [(
            "vm-a".into(),
            "underlay_link".into(),
            "eth0 is down (underlay)".into()
        )]
    );
    let c = first_cause(&r);
    assert_eq!(c["fix"]["commands"][0], "ip link set up eth0");
    assert_eq!(c["fix"]["vxlab"], format!("vxlab up {}", lab.name));
    // The lost pings both ways are its symptoms, not causes of their own.
    let symptoms = r["diagnoses"][0]["symptoms"].as_array().unwrap();
    assert!(symptoms
        .iter()
        .any(|s| s["guest"] == "vm-b" && s["kind"] == "overlay_ping"));
    let text = String::from_utf8(lab.run(&["check", &lab.name]).stdout).unwrap();
    assert!(
        text.contains("vm-a: eth0 is down (underlay): expected up, seen down (underlay link)"),
        "{text}"
    );
    assert!(
        text.contains("fix: `ip link set up eth0`, or `vxlab up t-r-down`"),
        "{text}"
    );
    // The kernel still lists 239.1.1.1 on the downed eth0; a student must not read that as
    // joined. vm-b, whose eth0 is up, has joined.
    assert!(
        text.contains("ip maddr: group NOT joined: eth0 is down")
            && text.matches("239.1.1.1 joined on eth0").count() == 1,
        "{text}"
    );
    assert_eq!(vtep(&r, "vm-a", "vxlan0")["joined"], serde_json::json!([]));
    assert_eq!(vtep(&r, "vm-a", "vxlan0")["underlay_down"], true);
    assert_eq!(vtep(&r, "vm-b", "vxlan0")["joined"][0], "239.1.1.1");

    let (code, r) = up_again(&lab);
    assert_eq!(code, 0, "{:#}", r["failures"]);
    assert_eq!(repairs(&r), ["vm-a: ip link set up eth0"]);
    // The kernel's eth0 is up again, and vm-a has joined the group on it.
    let eth0 = kernel(&lab, "vm-a", &["ip", "-j", "link", "show", "eth0"]);
    assert!(
        eth0[0]["flags"]
            .as_array()
            .unwrap()
            .contains(&Value::from("UP")),
        "{eth0:#}"
    );
    assert!(
        joined(&lab, "vm-a").contains(&"239.1.1.1".to_string()),
        "{:?}",
        joined(&lab, "vm-a")
    );
    assert_eq!(lab.check().0, 0);
    lab.down_leaves_nothing();
}

#[test]
fn a_changed_underlay_address_is_blamed_on_its_own_guest_first() {
    let lab = seed("t-r-und", "192.168.74.");
    readdress(&lab, "vm-a", "eth0", "192.168.74.2/24", "192.168.74.22/24");
    // vm-b now learns vm-a behind .22.
    student(
        &lab,
        "vm-a",
        &["ping", "-c", "1", "-W", "1", "192.168.42.3"],
    );
    let (code, r) = lab.check();
    assert_eq!(code, 1);
    only_vm_a_underlay_is_the_cause(&r);
    assert_eq!(
        first_cause(&r)["fix"]["commands"],
        serde_json::json!([
            "ip addr del 192.168.74.22/24 dev eth0",
            "ip addr add 192.168.74.2/24 dev eth0"
        ])
    );
    // vm-b's stale entry for vm-a (dst .22) is a symptom of vm-a's cause, grouped under it.
    let symptoms: Vec<&Value> = r["diagnoses"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| d["symptoms"].as_array().unwrap())
        .collect();
    assert!(
        symptoms
            .iter()
            .any(|s| s["guest"] == "vm-b" && s["seen"].as_str().unwrap_or("").contains(".22")),
        "{:#}",
        r["diagnoses"]
    );

    let (code, r) = up_again(&lab);
    assert_eq!(code, 0, "{:#}", r["failures"]);
    assert_eq!(addresses(&lab, "vm-a", "eth0"), ["192.168.74.2/24"]);
    lab.down_leaves_nothing();
}

#[test]
fn a_deleted_vxlan_device_carries_the_plan_lines_and_up_recreates_it() {
    let lab = seed("t-r-del", "192.168.75.");
    student(&lab, "vm-a", &["ip", "link", "del", "vxlan0"]);
    let (code, r) = lab.check();
    assert_eq!(code, 1);
    let c = first_cause(&r);
    assert_eq!(c["what"], "vxlan0 is missing");
    let add = c["fix"]["commands"][0].as_str().unwrap().to_string();
    assert!(
        add.starts_with("ip link add vxlan0 address 02:")
            && add.ends_with(" type vxlan id 42 group 239.1.1.1 dev eth0 dstport 4789"),
        "{add}"
    );
    // The same line `vxlab plan` prints.
    let plan = String::from_utf8(lab.run(&["plan", lab.file.to_str().unwrap()]).stdout).unwrap();
    assert!(plan.contains(&add));

    let (code, r) = up_again(&lab);
    assert_eq!(code, 0, "{:#}", r["failures"]);
    assert_eq!(vtep(&r, "vm-a", "vxlan0")["kernel"]["vni"], 42);
    // What the kernel itself has: the planned device, up, with its address.
    let link = kernel(&lab, "vm-a", &["ip", "-j", "-d", "link", "show", "vxlan0"]);
    let info = &link[0]["linkinfo"]["info_data"];
    assert_eq!(
        (&info["id"], &info["group"], &info["link"], &info["port"]),
        (
            &Value::from(42),
            &Value::from("239.1.1.1"),
            &Value::from("eth0"),
            &Value::from(4789)
        ),
        "{link:#}"
    );
    // Made with the MAC the line gives.
    let mac = link[0]["address"].as_str().unwrap();
    assert!(
        add.contains(&format!(" address {mac} ")),
        "{add} made {mac}"
    );
    assert_eq!(addresses(&lab, "vm-a", "vxlan0"), ["192.168.42.2/24"]);
    assert_eq!(lab.check().0, 0);
    lab.down_leaves_nothing();
}

/// What `ip monitor link address` prints on the host while `during` runs: every change to a
/// link or an address. Started and stopped on events (a bridge made and deleted), not
/// on a guess of how long the monitor takes to start or to print.
fn host_changes_during(during: impl FnOnce()) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    let mut monitor = Command::new("ip")
        .args(["monitor", "link", "address"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(monitor.stdout.take().unwrap()).lines();
    let mark = |n: &str| {
        on_host(&["link", "add", n, "type", "bridge"]);
        on_host(&["link", "del", n]);
    };
    // Until the monitor shows a mark, it may not be listening yet: mark again.
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for l in lines.by_ref() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let wait_for = |n: &str, again: bool| -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(std::time::Duration::from_millis(200)) {
                Ok(l) if l.contains(n) => return seen,
                Ok(l) => seen.push(l),
                Err(_) if again => mark(n),
                Err(e) => panic!("the monitor stopped: {e}"),
            }
        }
    };
    mark("vxmark0");
    wait_for("vxmark0", true);
    // Drain the first mark's other lines (its deletion).
    while rx
        .recv_timeout(std::time::Duration::from_millis(50))
        .is_ok()
    {}
    during();
    mark("vxmark1");
    let seen = wait_for("vxmark1", false);
    let _ = monitor.kill();
    let _ = monitor.wait();
    let _ = reader.join();
    seen
}

#[test]
fn a_second_up_of_a_healthy_lab_runs_no_configuration_command() {
    let lab = seed("t-r-noop", "192.168.76.");
    let log = lab.state.path().join(&lab.name).join("commands-vm-a.log");
    let before = std::fs::read_to_string(&log).unwrap().lines().count();
    // Nothing on the host changes either: no link or address of the lab's is written. The
    // kernel itself still changes a new bridge for a moment after `up` (its operational
    // state a second later, its IPv6 link-local address when duplicate detection ends):
    // those are waited out first.
    let own = [lab.bridge(), vxlab::plan::host_link_prefix(&lab.name)];
    let settled = || {
        // The lab's links on the host: its bridge and the guests' host ends.
        let links: Vec<String> = std::fs::read_dir("/sys/class/net")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| *n == own[0] || n.starts_with(&own[1]))
            .collect();
        links.iter().all(|link| {
            let oper = std::fs::read_to_string(format!("/sys/class/net/{link}/operstate"))
                .unwrap_or_default();
            let v6 = Command::new("ip")
                .args(["-6", "addr", "show", "dev", link])
                .output()
                .unwrap();
            let v6 = String::from_utf8_lossy(&v6.stdout).into_owned();
            let no_v6 =
                std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{link}/disable_ipv6"))
                    .map_or(true, |v| v.trim() == "1");
            oper.trim() == "up" && (no_v6 || v6.contains("scope link")) && !v6.contains("tentative")
        })
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !settled() {
        assert!(
            std::time::Instant::now() < until,
            "the lab's links never settled"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut r = (0, Value::Null);
    let host = host_changes_during(|| r = up_again(&lab));
    let touched: Vec<&String> = host
        .iter()
        .filter(|l| own.iter().any(|o| l.contains(o.as_str())))
        .collect();
    assert_eq!(
        touched,
        Vec::<&String>::new(),
        "the second up changed the host"
    );
    let (code, r) = r;
    assert_eq!(code, 0);
    assert_eq!(r["repairs"].as_array().unwrap().len(), 0);
    let ran: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .skip(before)
        .map(String::from)
        .collect();
    assert!(!ran.is_empty(), "the second up reads the guest");
    let changes = [
        " link add ",
        " link set ",
        " link del ",
        " addr add ",
        " addr del ",
        " fdb append ",
        " fdb replace ",
        " fdb del ",
        " route add ",
        " neigh del ",
        " neigh flush ",
    ];
    let changed: Vec<&String> = ran
        .iter()
        .filter(|l| changes.iter().any(|c| l.contains(c)))
        .collect();
    assert_eq!(changed, Vec::<&String>::new());
    lab.down_leaves_nothing();
}

#[test]
fn reset_forgets_what_was_learned_and_recreates_a_guest_that_is_gone() {
    let lab = seed("t-r-reset", "192.168.77.");
    let fdb = |g: &str| kernel(&lab, g, &["bridge", "-j", "fdb", "show", "dev", "vxlan0"]);
    let learned = |g: &str| {
        fdb(g)
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["mac"] != "00:00:00:00:00:00")
            .count()
    };
    assert_eq!(learned("vm-a"), 1, "the checks' pings taught vm-a its peer");
    let out = lab.run(&["reset", &lab.name, "vm-a", "--json"]);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    // The forgetting is shown, as commands.
    let ran = repairs(&r);
    assert!(
        ran.contains(&"vm-a: ip neigh flush dev vxlan0".to_string()),
        "{ran:?}"
    );
    assert!(
        ran.iter()
            .any(|c| c.starts_with("vm-a: bridge fdb del 02:")),
        "{ran:?}"
    );
    assert!(
        ran.iter().all(|c| c.starts_with("vm-a: ")),
        "only vm-a: {ran:?}"
    );
    // And the kernel forgot: vm-a knows no peer (the reset's own checks ran before the
    // forgetting), until the student's first ping teaches it again.
    assert_eq!(out.status.code(), Some(0), "{r:#}");
    assert_eq!(learned("vm-a"), 0, "{}", fdb("vm-a"));
    let neighbours = kernel(
        &lab,
        "vm-a",
        &["ip", "-j", "neigh", "show", "dev", "vxlan0"],
    );
    assert_eq!(
        neighbours,
        serde_json::json!([]),
        "vm-a still has neighbours"
    );
    let reported = &common::vtep(&r, "vm-a", "vxlan0")["fdb"];
    assert!(
        reported
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["mac"] == "00:00:00:00:00:00"),
        "the report shows an entry forgotten: {reported}"
    );
    let ping = Command::new("ip")
        .args(["netns", "exec", &format!("vxlab-{}.vm-a", lab.name)])
        .args(["ping", "-c", "1", "-W", "2", "192.168.42.3"])
        .status()
        .unwrap();
    assert!(ping.success());
    assert_eq!(learned("vm-a"), 1, "the first ping taught vm-a its peer");

    // For people: the repairs, then every other command reset ran, as `$` lines: the
    // reads it decided by, and the checks' reads and pings.
    let out = lab.run(&["reset", &lab.name, "vm-a"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let mut from = 0;
    for needle in [
        "vm-a: reset: vxlan0 forgets what it learned",
        "  $ ip neigh flush dev vxlan0\n",
        "checks passed",
        "to decide what to repair, vxlab read vm-a; in vm-a it ran:\n",
        "  $ ip -j -d maddr show dev eth0\n",
        "  $ bridge -j fdb show dev vxlan0\n",
        "after the repairs it checked the lab",
        "  $ ip -V\n",
        "vm-a:\n  $ ping -c 1 -W 1 -q 192.168.42.3\n",
        "vm-b:\n  $ ping -c 1 -W 1 -q 192.168.42.2\n",
        "then it read vm-a again (the same reads), ran the forgetting commands above",
    ] {
        from += text[from..]
            .find(needle)
            .unwrap_or_else(|| panic!("`{needle}` missing after byte {from}:\n{text}"));
    }

    // A guest that is gone altogether is created anew.
    let ns = format!("vxlab-{}.vm-b", lab.name);
    assert!(Command::new("ip")
        .args(["netns", "del", &ns])
        .status()
        .unwrap()
        .success());
    let out = lab.run(&["reset", &lab.name, "vm-b", "--json"]);
    let r: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(0), "{:#}", r["failures"]);
    assert_eq!(r["made_anew"], serde_json::json!(["vm-b"]), "{r:#}");
    assert!(std::path::Path::new("/run/netns").join(&ns).exists());
    assert_eq!(lab.check().0, 0);
    // For people: what making it anew did on the host, as `$` lines.
    assert!(Command::new("ip")
        .args(["netns", "del", &ns])
        .status()
        .unwrap()
        .success());
    let out = lab.run(&["reset", &lab.name, "vm-b"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let mut from = 0;
    for needle in [
        "vm-b was made anew; on the host that is (by hand):\n",
        &format!("  $ ip netns add {ns}\n"),
        &format!("type veth peer name eth0 netns {ns}\n"),
    ] {
        from += text[from..]
            .find(needle)
            .unwrap_or_else(|| panic!("`{needle}` missing after byte {from}:\n{text}"));
    }
    lab.down_leaves_nothing();
}

#[test]
fn status_never_calls_a_failing_lab_healthy() {
    // A student walks the lab on a terminal and presses Ctrl-C at the pause after stage 2:
    // the vxlan devices are up, the overlay addresses not yet.
    let lab = Lab::shipped(
        "two-netns.yaml",
        "t-r-stat",
        &[("192.168.10.", "192.168.78.")],
    );
    let mut walk = Terminal::start(&lab, &["walk", lab.file.to_str().unwrap()]);
    walk.wait_for("[Enter]");
    walk.send(b"\r");
    walk.wait_for("== 2. the vxlan devices");
    walk.wait_for_nth("[Enter]", 2);
    walk.send(b"\x03");
    let status = walk.wait();
    assert_eq!(
        status.code(),
        Some(130),
        "walk after Ctrl-C:\n{}",
        walk.output()
    );
    assert!(
        walk.output().contains("`vxlab up t-r-stat` finishes it"),
        "{}",
        walk.output()
    );
    assert!(
        !walk.output().contains("== 3."),
        "walk reached stage 3:\n{}",
        walk.output()
    );
    assert!(addresses(&lab, "vm-a", "vxlan0").is_empty());

    let s = status_of(&lab);
    let row = &s["labs"][0];
    assert_eq!(row["lab"], lab.name.as_str());
    assert_eq!(row["ok"], false, "{s:#}");
    assert!(
        row["health"]
            .as_str()
            .unwrap()
            .starts_with("FAILING: vm-a: vxlan0 address"),
        "{s:#}"
    );
    // The check status made is the last check now: whoever reads it next sees the same.
    assert!(row["last_check"]["failed"].as_u64() > Some(0), "{s:#}");
    let text = String::from_utf8_lossy(&lab.run(&["status"]).stdout).to_string();
    assert!(
        !text.contains("healthy") && text.contains("FAILING"),
        "{text}"
    );
    // While another vxlab holds the lab's lock to change it (an `up` still making it), status
    // says who, and neither checks it half-made nor calls it failing. The test takes the
    // lock with vxlab's own call, as a running vxlab does.
    let held = vxlab::state::StateDir::at(lab.state.path())
        .lock("t-r-stat")
        .expect("the lab's lock is free");
    let s = status_of(&lab);
    let row = &s["labs"][0];
    let health = row["health"].as_str().unwrap();
    assert!(
        health.starts_with("being changed by repair-")
            && health.ends_with(&format!("(pid {}): not checked now", std::process::id())),
        "{s:#}"
    );
    assert_eq!(row["ok"], Value::Null, "{s:#}");
    assert_eq!(row["busy"], std::process::id(), "{s:#}");
    drop(held);
    let s = status_of(&lab);
    assert_eq!(s["labs"][0]["ok"], false, "{s:#}");
    // `up` finishes what the walk did not, and status then says so.
    let (code, r) = up_again(&lab);
    assert_eq!(code, 0, "{:#}", r["failures"]);
    let s = status_of(&lab);
    assert_eq!(s["labs"][0]["ok"], true, "{s:#}");
    // A firewall that cannot be read leaves the fence unchecked, and status says so rather
    // than passing over it.
    let bin = tempfile::tempdir().unwrap();
    for tool in ["iptables", "ip6tables"] {
        let fake = bin.path().join(tool);
        std::fs::write(
            &fake,
            "#!/bin/sh\necho 'cannot read the tables' >&2\nexit 4\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vxlab"))
        .args(["status", "--json"])
        .env("VXLAB_STATE_DIR", lab.state.path())
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.path().display(),
                std::env::var("PATH").unwrap()
            ),
        )
        .output()
        .unwrap();
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    let health = s["labs"][0]["health"].as_str().unwrap();
    assert!(
        health.contains("not checked: the firewall rules that fence bridge"),
        "{s:#}"
    );
    lab.down_leaves_nothing();
}

#[test]
fn a_route_that_takes_the_peer_away_is_named_and_up_removes_it() {
    let lab = seed("t-r-route", "192.168.82.");
    // A host route that sends the peer's overlay address into lo, and a blackhole for the
    // peer's VTEP: both inside planned subnets, neither in the plan.
    student(
        &lab,
        "vm-a",
        &["ip", "route", "add", "192.168.42.3/32", "dev", "lo"],
    );
    student(
        &lab,
        "vm-a",
        &["ip", "route", "add", "blackhole", "192.168.82.3"],
    );
    let (code, r) = lab.check();
    assert_eq!(code, 1);
    let c = first_cause(&r);
    assert_eq!(
        (c["guest"].as_str(), c["layer"].as_str(), c["kind"].as_str()),
        (Some("vm-a"), Some("underlay_address"), Some("extra_route"))
    );
    assert_eq!(
        c["fix"]["commands"][0],
        "ip route del blackhole 192.168.82.3/32"
    );
    assert!(
        r["failures"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "extra_route"
                && f["layer"] == "overlay_address"
                && f["fix"]["commands"][0] == "ip route del 192.168.42.3/32 dev lo"),
        "{:#}",
        r["failures"]
    );
    let (code, r) = up_again(&lab);
    assert_eq!(code, 0, "{:#}", r["failures"]);
    assert_eq!(
        repairs(&r),
        [
            "vm-a: ip route del blackhole 192.168.82.3/32",
            "vm-a: ip route del 192.168.42.3/32 dev lo"
        ]
    );
    assert_eq!(
        routes(&lab, "vm-a"),
        ["192.168.42.0/24 dev vxlan0", "192.168.82.0/24 dev eth0"]
    );

    // Routes elsewhere through the lab's devices: a default route into the overlay, and a
    // network the lab does not have. Named, and removed by up.
    student(
        &lab,
        "vm-a",
        &["ip", "route", "add", "default", "via", "192.168.42.3"],
    );
    student(
        &lab,
        "vm-a",
        &["ip", "route", "add", "10.9.0.0/16", "dev", "vxlan0"],
    );
    let (code, r) = lab.check();
    assert_eq!(code, 1);
    let named: Vec<&str> = r["failures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "extra_route")
        .map(|f| f["fix"]["commands"][0].as_str().unwrap())
        .collect();
    assert_eq!(
        named,
        [
            "ip route del default via 192.168.42.3 dev vxlan0",
            "ip route del 10.9.0.0/16 dev vxlan0"
        ]
    );
    let (code, r) = up_again(&lab);
    assert_eq!(code, 0, "{:#}", r["failures"]);
    assert_eq!(
        repairs(&r),
        [
            "vm-a: ip route del default via 192.168.42.3 dev vxlan0",
            "vm-a: ip route del 10.9.0.0/16 dev vxlan0"
        ]
    );
    assert_eq!(
        routes(&lab, "vm-a"),
        ["192.168.42.0/24 dev vxlan0", "192.168.82.0/24 dev eth0"]
    );

    // What only a ping finds: vm-b no longer answers echo requests. `status` pings once all
    // else holds, so it does not call the lab healthy.
    student(
        &lab,
        "vm-b",
        &["sysctl", "-q", "-w", "net.ipv4.icmp_echo_ignore_all=1"],
    );
    let s = status_of(&lab);
    let row = &s["labs"][0];
    assert_eq!(row["ok"], false, "{s:#}");
    assert!(row["health"].as_str().unwrap().contains("ping"), "{s:#}");
    student(
        &lab,
        "vm-b",
        &["sysctl", "-q", "-w", "net.ipv4.icmp_echo_ignore_all=0"],
    );
    let s = status_of(&lab);
    assert_eq!(s["labs"][0]["ok"], true, "{s:#}");
    lab.down_leaves_nothing();
}

#[test]
fn unicast_and_static_labs_are_repaired_too() {
    let uni = Lab::shipped("unicast.yaml", "t-r-uni", &[("192.168.30.", "192.168.79.")]);
    assert_eq!(uni.up().0, 0);
    student(
        &uni,
        "vm-a",
        &[
            "bridge",
            "fdb",
            "del",
            "00:00:00:00:00:00",
            "dev",
            "vxlan0",
            "dst",
            "192.168.79.3",
        ],
    );
    student(
        &uni,
        "vm-a",
        &[
            "bridge",
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            "vxlan0",
            "dst",
            "192.168.79.99",
        ],
    );
    let (code, r) = uni.check();
    assert_eq!(code, 1);
    let kinds: Vec<&str> = r["failures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["guest"] == "vm-a" && f["layer"] == "flooding")
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["extra_flood_entry", "flood_entry"]);
    let (code, r) = up_again(&uni);
    assert_eq!(code, 0, "{:#}", r["failures"]);
    assert_eq!(flood_dsts(&uni, "vm-a"), ["192.168.79.3", "192.168.79.4"]);

    // vm-a's device made again by hand, from another local address.
    student(&uni, "vm-a", &["ip", "link", "del", "vxlan0"]);
    student(
        &uni,
        "vm-a",
        &[
            "ip",
            "link",
            "add",
            "vxlan0",
            "type",
            "vxlan",
            "id",
            "100",
            "local",
            "192.168.79.99",
            "dev",
            "eth0",
            "dstport",
            "4789",
        ],
    );
    let (code, r) = uni.check();
    assert_eq!(code, 1);
    let c = first_cause(&r);
    assert_eq!(
        (c["guest"].as_str(), c["what"].as_str()),
        (Some("vm-a"), Some("vxlan0 local"))
    );
    let add = c["fix"]["commands"][1].as_str().unwrap();
    assert!(
        add.starts_with("ip link add vxlan0 address 02:")
            && add.ends_with(" type vxlan id 100 local 192.168.79.2 dev eth0 dstport 4789"),
        "{add}"
    );
    let (code, r) = up_again(&uni);
    assert_eq!(code, 0, "{:#}", r["failures"]);
    let link = kernel(&uni, "vm-a", &["ip", "-j", "-d", "link", "show", "vxlan0"]);
    assert_eq!(
        link[0]["linkinfo"]["info_data"]["local"], "192.168.79.2",
        "{link:#}"
    );
    assert_eq!(uni.check().0, 0);
    uni.down_leaves_nothing();

    let (st, r) = static_up("t-r-static", "192.168.80.");
    let mac_b = vtep(&r, "vm-b", "vxlan0")["mac"]
        .as_str()
        .unwrap()
        .to_string();
    student(
        &st,
        "vm-a",
        &[
            "bridge",
            "fdb",
            "replace",
            &mac_b,
            "dev",
            "vxlan0",
            "dst",
            "192.168.80.99",
        ],
    );
    let (code, r) = st.check();
    assert_eq!(code, 1);
    let c = first_cause(&r);
    assert_eq!(
        (c["guest"].as_str(), c["kind"].as_str()),
        (Some("vm-a"), Some("static_entry"))
    );
    assert_eq!(
        c["fix"]["commands"][0],
        format!("bridge fdb replace {mac_b} dev vxlan0 dst 192.168.80.3")
    );
    let (code, r) = up_again(&st);
    assert_eq!(code, 0, "{:#}", r["failures"]);
    assert_eq!(
        fdb_dst(&r, "vm-a", "vxlan0", &Value::from(mac_b.clone())).as_deref(),
        Some("192.168.80.3")
    );

    // vm-b's FDB flushed: each lost ping goes with vm-b's entry for the guest it involves.
    student(&st, "vm-b", &["bridge", "fdb", "flush", "dev", "vxlan0"]);
    let (code, r) = st.check();
    assert_eq!(code, 1);
    let under = |guest: &str, peer: &str| -> Vec<String> {
        r["diagnoses"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["cause"]["guest"] == guest && d["cause"]["peer"] == peer)
            .flat_map(|d| d["symptoms"].as_array().unwrap().iter())
            .map(|s| {
                format!(
                    "{} {}",
                    s["guest"].as_str().unwrap(),
                    s["peer"].as_str().unwrap()
                )
            })
            .collect()
    };
    let for_c = under("vm-b", "vm-c");
    assert!(for_c.contains(&"vm-c vm-b".to_string()), "{r:#}");
    assert!(for_c.iter().all(|s| s.contains("vm-c")), "{r:#}");
    assert_eq!(up_again(&st).0, 0);

    // vm-b's underlay down: the cause on vm-b, and vm-a's lost pings grouped under it.
    student(&st, "vm-b", &["ip", "link", "set", "eth0", "down"]);
    let (code, r) = st.check();
    assert_eq!(code, 1);
    assert_eq!(
        causes(&r)[0],
        (
            "vm-b".into(),
            "underlay_link".into(),
            "eth0 is down (underlay)".into()
        )
    );
    let (code, r) = up_again(&st);
    assert_eq!(code, 0, "{:#}", r["failures"]);
    assert_eq!(repairs(&r), ["vm-b: ip link set up eth0"]);
    // The static entry survived the underlay going down and up: it is permanent.
    let fdb = kernel(
        &st,
        "vm-a",
        &["bridge", "-j", "fdb", "show", "dev", "vxlan0"],
    );
    assert!(
        fdb.as_array()
            .unwrap()
            .iter()
            .any(|e| e["mac"] == mac_b.as_str() && e["dst"] == "192.168.80.3"),
        "{fdb:#}"
    );
    assert_eq!(st.check().0, 0);
    st.down_leaves_nothing();
}

#[test]
fn status_finds_guests_of_another_state_dir_and_tells_a_non_root_user_what_it_needs() {
    let lab = seed("t-r-else", "192.168.81.");
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vxlab"))
        .args(["status", "--json"])
        .env("VXLAB_STATE_DIR", other.path())
        .output()
        .unwrap();
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    let elsewhere: Vec<&str> = s["elsewhere"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(elsewhere.contains(&"vxlab-t-r-else.vm-a"), "{s:#}");
    // Other tests' labs may run beside it; this one is named once, by its lab.
    let labs = s["elsewhere_labs"].as_array().unwrap();
    assert_eq!(labs.iter().filter(|l| *l == "t-r-else").count(), 1, "{s:#}");
    let text = Command::new(env!("CARGO_BIN_EXE_vxlab"))
        .arg("status")
        .env("VXLAB_STATE_DIR", other.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("VXLAB_STATE_DIR"), "{text}");

    // A state directory as vxlab makes it, root's alone.
    use std::os::unix::fs::PermissionsExt;
    // `vxlab status` as nobody, on the lab's state directory made `mode`.
    let status_as_nobody = |mode: u32| {
        std::fs::set_permissions(lab.state.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_vxlab"))
            .arg("status")
            .env("VXLAB_STATE_DIR", lab.state.path())
            .output()
            .unwrap()
    };
    let out = status_as_nobody(0o700);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(stderr.contains("run vxlab as root"), "{stderr}");
    // One an older vxlab made 0755, listing labs whose own directories are root's alone:
    // the same answer, not a row per lab saying that only its lock is left.
    let out = status_as_nobody(0o755);
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{said}");
    assert!(said.contains("run vxlab as root"), "{said}");
    assert!(!said.contains("lock"), "{said}");
    lab.down_leaves_nothing();
}

#[test]
fn a_guest_that_drops_pings_is_named_and_vxlab_says_it_has_nothing_to_repair() {
    // The student makes vm-b ignore echo requests: nothing vxlab set up changed, and vm-b's
    // own pings are answered.
    let lab = seed("t-r-echo", "192.168.86.");
    student(
        &lab,
        "vm-b",
        &["sysctl", "-q", "-w", "net.ipv4.icmp_echo_ignore_all=1"],
    );
    let (code, r) = lab.check();
    assert_eq!(code, 1);
    let d = r["diagnoses"].as_array().unwrap();
    assert_eq!(d.len(), 1, "{r:#}");
    let c = first_cause(&r);
    assert_eq!(c["guest"], "vm-b", "{r:#}");
    assert_eq!(c["what"], "answers no ping");
    assert_eq!(c["fix"]["vxlab"], "");
    let hint = c["fix"]["hint"].as_str().unwrap();
    assert!(
        hint.contains("nothing vxlab set up in vm-b differs")
            && hint.contains("icmp_echo_ignore_all"),
        "{hint}"
    );
    assert!(d[0]["symptoms"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["guest"] == "vm-a"));
    // `up` has nothing to run, and says the same.
    let (code, r) = up_again(&lab);
    assert_eq!(code, 1);
    assert_eq!(repairs(&r), Vec::<String>::new());
    let out = lab.run(&["check", &lab.name]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("vm-b: answers no ping"), "{text}");
    assert!(
        !text.contains(&format!("fix: `vxlab up {}`", lab.name)),
        "{text}"
    );
    student(
        &lab,
        "vm-b",
        &["sysctl", "-q", "-w", "net.ipv4.icmp_echo_ignore_all=0"],
    );
    assert_eq!(lab.check().0, 0);
    lab.down_leaves_nothing();
}

#[test]
fn a_host_end_off_the_bridge_or_down_is_named_and_up_and_reset_put_it_back() {
    // The guest cannot see it: off the bridge, its eth0 even has carrier.
    let lab = seed("t-r-hend", "192.168.88.");
    let plan = json_of_plan(&lab);
    let link = plan["guests"][1]["host_link"].as_str().unwrap().to_string();
    let fixed = format!("ip link set dev {link} master vxbr-t-r-hend up");
    for (breaking, seen) in [
        (vec!["link", "set", &link, "nomaster"], "up, on no bridge"),
        (
            vec!["link", "set", &link, "down"],
            "down, on bridge vxbr-t-r-hend",
        ),
    ] {
        on_host(&breaking);
        let (code, r) = lab.check();
        assert_eq!(code, 1);
        let d = &r["diagnoses"][0];
        assert_eq!(
            (d["cause"]["guest"].as_str(), d["cause"]["kind"].as_str()),
            (Some("vm-b"), Some("host_end")),
            "{r:#}"
        );
        assert_eq!(d["cause"]["seen"], seen, "{r:#}");
        assert!(
            d["cause"]["fix"]["hint"]
                .as_str()
                .unwrap()
                .contains(&format!("`{fixed}`")),
            "{r:#}"
        );
        // Both sides' lost pings go with it: nothing else is the cause.
        assert_eq!(r["diagnoses"].as_array().unwrap().len(), 1, "{r:#}");
        let (code, r) = if seen.starts_with("up") {
            up_again(&lab)
        } else {
            let out = lab.run(&["reset", "--json", &lab.name, "vm-b"]);
            (
                out.status.code().unwrap_or(-1),
                serde_json::from_slice(&out.stdout).unwrap(),
            )
        };
        assert_eq!(code, 0, "{:#}", r["failures"]);
        assert!(
            noted(&r, &["repaired on the host", &fixed]),
            "{:#}",
            r["notes"]
        );
        assert_eq!(lab.check().0, 0);
    }
    lab.down_leaves_nothing();
}

fn json_of_plan(lab: &Lab) -> Value {
    let out = lab.run(&["plan", "--json", lab.file.to_str().unwrap()]);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_downed_or_deleted_bridge_is_the_cause_and_up_says_it_repaired_it() {
    let lab = seed("t-r-brdg", "192.168.84.");
    let bridge = "vxbr-t-r-brdg";
    for (breaking, seen, hint, note) in [
        (
            vec!["link", "set", bridge, "down"],
            format!("up, on bridge {bridge}, which is down"),
            format!("on the host, `ip link set dev {bridge} up`"),
            format!("the lab's bridge {bridge} was down: `ip link set dev {bridge} up`"),
        ),
        (
            vec!["link", "del", bridge],
            format!("on no bridge: the lab's bridge {bridge} is gone"),
            "makes the bridge again and puts each guest's host end back on it".to_string(),
            format!("the lab's bridge {bridge} was gone: made again"),
        ),
    ] {
        on_host(&breaking);
        let (code, r) = lab.check();
        assert_eq!(code, 1);
        // Each guest's cause is its host end on the broken bridge (not a firewall), and the
        // lost pings go with it.
        let causes: Vec<(&str, &str, &str)> = r["diagnoses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                let c = &d["cause"];
                (
                    c["guest"].as_str().unwrap(),
                    c["kind"].as_str().unwrap(),
                    c["seen"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            causes,
            [
                ("vm-a", "host_end", seen.as_str()),
                ("vm-b", "host_end", seen.as_str())
            ],
            "{r:#}"
        );
        let said = r["diagnoses"][0]["cause"]["fix"]["hint"].as_str().unwrap();
        assert!(said.contains(&hint), "{said}");
        let (code, r) = up_again(&lab);
        assert_eq!(code, 0, "{:#}", r["failures"]);
        assert!(noted(&r, &[&note]), "{:#}", r["notes"]);
        assert_eq!(lab.check().0, 0);
    }
    // The fence around the bridge: a rule deleted by hand is put back, and said.
    let fence = common::fence_rules("t-r-brdg");
    assert_eq!(fence.len(), common::fence_size(), "{fence:#?}");
    // The rule that keeps the guests' connections out of the host, as vxlab wrote it.
    let input = vxlab::host::firewall::fence(bridge, "t-r-brdg", true)
        .into_iter()
        .find(|r| r.program == "iptables" && r.chain == "INPUT")
        .unwrap();
    let undo = input.argv("-D");
    let out = Command::new(&undo[0]).args(&undo[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{undo:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        common::fence_rules("t-r-brdg").len(),
        common::fence_size() - 1
    );
    // check names it, on the host, as the only cause (the guests' own traffic is as
    // before), with `up` as the fix; status calls the lab failing.
    let (code, r) = lab.check();
    assert_eq!(code, 1, "{r:#}");
    let causes = r["diagnoses"].as_array().unwrap();
    assert_eq!(causes.len(), 1, "{r:#}");
    let cause = &causes[0]["cause"];
    assert_eq!(cause["kind"], "fence", "{r:#}");
    assert_eq!(cause["layer"], "host", "{r:#}");
    assert_eq!(cause["guest"], "", "{r:#}");
    assert_eq!(
        cause["seen"],
        format!("1 of {} missing", common::fence_size()),
        "{r:#}"
    );
    assert_eq!(cause["fix"]["vxlab"], "vxlab up t-r-brdg", "{r:#}");
    let said = lab.run(&["check", "t-r-brdg"]);
    let said = String::from_utf8_lossy(&said.stdout).into_owned();
    assert!(
        said.contains(&format!(
            "  host: the firewall rules that fence bridge {bridge} off from the host: expected \
             all {} in place, seen 1 of {0} missing (host)\n      fix: `vxlab up t-r-brdg`",
            common::fence_size()
        )),
        "{said}"
    );
    let s = status_of(&lab);
    let row = &s["labs"][0];
    assert_eq!(row["ok"], false, "{s:#}");
    assert!(
        row["health"]
            .as_str()
            .unwrap()
            .starts_with("FAILING: host: the firewall rules"),
        "{s:#}"
    );
    let (code, r) = up_again(&lab);
    assert_eq!(code, 0, "{:#}", r["failures"]);
    assert!(
        noted(
            &r,
            &["repaired on the host: 1 of the firewall rules", bridge]
        ),
        "{:#}",
        r["notes"]
    );
    assert_eq!(common::fence_rules("t-r-brdg").len(), common::fence_size());
    // An accept of IPv6 neighbour discovery moved below the bridge's drop (where it lets
    // nothing in), as iptables lists the chain: check counts it, up moves it back above.
    if vxlab::host::firewall::host_has_ipv6() {
        let accept = vxlab::host::firewall::fence(bridge, "t-r-brdg", true)
            .into_iter()
            .find(|r| r.program == "ip6tables" && r.spec.iter().any(|w| w == "ACCEPT"))
            .unwrap();
        for op in ["-D", "-A"] {
            let argv = accept.argv(op);
            let out = Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
            assert!(out.status.success(), "{argv:?}");
        }
        let (code, r) = lab.check();
        assert_eq!(code, 1, "{r:#}");
        assert_eq!(r["diagnoses"][0]["cause"]["kind"], "fence", "{r:#}");
        let (code, r) = up_again(&lab);
        assert_eq!(code, 0, "{:#}", r["failures"]);
        assert!(
            noted(&r, &["repaired on the host:", "firewall rules", bridge]),
            "{:#}",
            r["notes"]
        );
        let listed = Command::new("ip6tables")
            .args(["-S", "INPUT"])
            .output()
            .unwrap();
        let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
        let ours: Vec<&str> = listed
            .lines()
            .filter(|l| l.contains("\"vxlab: t-r-brdg\"") && l.contains(bridge))
            .collect();
        assert!(
            ours.len() == 3 && ours[2].ends_with("-j DROP"),
            "the accepts are not above the drop:\n{listed}"
        );
        assert_eq!(lab.check().0, 0);
    }
    // Whole, it is only read: a second `up` says nothing of it.
    let (_, r) = up_again(&lab);
    assert!(!noted(&r, &["firewall"]), "{:#}", r["notes"]);
    lab.down_leaves_nothing();
}

#[test]
fn a_vxlan_device_put_in_a_bridge_and_a_renamed_underlay_are_named_and_repaired() {
    let lab = seed("t-r-port", "192.168.90.");
    // vxlan0 made a port of a bridge of the student's own: its FDB then lists the bridge's
    // entries too, which are not vxlan0's.
    student(
        &lab,
        "vm-a",
        &["ip", "link", "add", "br0", "type", "bridge"],
    );
    student(&lab, "vm-a", &["ip", "link", "set", "br0", "up"]);
    student(
        &lab,
        "vm-a",
        &["ip", "link", "set", "vxlan0", "master", "br0"],
    );
    let (code, r) = lab.check();
    assert_eq!(code, 1);
    let failures = r["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{r:#}");
    assert_eq!(failures[0]["kind"], "port", "{r:#}");
    assert_eq!(failures[0]["seen"], "master br0", "{r:#}");
    let (code, r) = up_again(&lab);
    assert_eq!(code, 0, "{:#}", r["failures"]);
    assert_eq!(repairs(&r), ["vm-a: ip link set dev vxlan0 nomaster"]);

    // eth0 renamed: named back (the vxlan device on it stays), by up and by reset.
    for repair in ["up", "reset"] {
        student(&lab, "vm-a", &["ip", "link", "set", "eth0", "down"]);
        student(&lab, "vm-a", &["ip", "link", "set", "eth0", "name", "eth1"]);
        student(&lab, "vm-a", &["ip", "link", "set", "eth1", "up"]);
        let (code, r) = lab.check();
        assert_eq!(code, 1);
        let c = first_cause(&r);
        assert_eq!(
            (c["what"].as_str(), c["seen"].as_str()),
            (Some("eth0 is missing (underlay)"), Some("renamed to eth1")),
            "{r:#}"
        );
        assert_eq!(
            c["fix"]["commands"],
            serde_json::json!([
                "ip link set down eth1",
                "ip link set dev eth1 name eth0",
                "ip link set up eth0"
            ])
        );
        let out = lab.run(&[repair, "--json", &lab.name]);
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(0), "{repair}: {:#}", r["failures"]);
        assert!(
            !repairs(&r).iter().any(|c| c.contains("link del")),
            "{repair} made vxlan0 again: {:?}",
            repairs(&r)
        );
        assert_eq!(lab.check().0, 0);
    }
    lab.down_leaves_nothing();
}

#[test]
fn two_faults_on_three_guests_each_explain_their_own_lost_pings() {
    let lab = Lab::shipped("unicast.yaml", "t-r-two", &[("192.168.30.", "192.168.85.")]);
    assert_eq!(lab.up().0, 0);
    // vm-b loses its head-end entries (for vm-a and vm-c); vm-c loses its overlay address.
    student(&lab, "vm-b", &["bridge", "fdb", "flush", "dev", "vxlan0"]);
    student(
        &lab,
        "vm-c",
        &["ip", "addr", "del", "10.100.0.3/24", "dev", "vxlan0"],
    );
    let (code, r) = lab.check();
    assert_eq!(code, 1);
    // vm-c's ping to vm-b goes with vm-c's missing address, not with vm-b's entry for vm-a.
    for d in r["diagnoses"].as_array().unwrap() {
        let cause = &d["cause"];
        for s in d["symptoms"].as_array().unwrap() {
            let from_c_to_b = s["guest"] == "vm-c" && s["peer"] == "vm-b";
            if from_c_to_b && s["kind"] == "overlay_ping" {
                assert_eq!(
                    (cause["guest"].as_str(), cause["kind"].as_str()),
                    (Some("vm-c"), Some("address")),
                    "{r:#}"
                );
            }
            // A cause about one peer explains nothing between two others.
            if let Some(p) = cause["peer"].as_str() {
                let pair = [cause["guest"].as_str().unwrap(), p];
                let involved = [
                    s["guest"].as_str().unwrap(),
                    s["peer"].as_str().unwrap_or(""),
                ];
                assert!(
                    involved.iter().all(|g| pair.contains(g) || g.is_empty()),
                    "{cause:#} explains {s:#}"
                );
            }
        }
    }
    let (code, _) = up_again(&lab);
    assert_eq!(code, 0);
    lab.down_leaves_nothing();
}

#[test]
fn the_same_rows_on_the_unicast_and_static_labs_cause_first_and_back_to_the_plan() {
    // Unicast (head-end replication to each peer): vm-b's overlay address changed by hand.
    let uni = Lab::shipped(
        "unicast.yaml",
        "t-r-rows",
        &[("192.168.30.", "192.168.94.")],
    );
    assert_eq!(uni.up().0, 0);
    readdress(&uni, "vm-b", "vxlan0", "10.100.0.2/24", "10.100.0.33/24");
    let (code, r) = uni.check();
    assert_eq!(code, 1);
    let all = causes(&r);
    assert_eq!(
        (all[0].0.as_str(), all[0].1.as_str()),
        ("vm-b", "overlay_address"),
        "{all:?}"
    );
    assert!(
        r["failures"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["guest"] == "vm-b"
                && f["seen"].as_str().unwrap_or("").contains("10.100.0.33")),
        "the extra address is flagged: {:#}",
        r["failures"]
    );
    let (code, r) = up_again(&uni);
    assert_eq!(code, 0, "{:#}", r["failures"]);
    assert_eq!(addresses(&uni, "vm-b", "vxlan0"), ["10.100.0.2/24"]);

    // vm-a's underlay address changed: the cause is on vm-a, not on the peers whose flood
    // entries point at its planned address.
    readdress(&uni, "vm-a", "eth0", "192.168.94.2/24", "192.168.94.22/24");
    let (code, r) = uni.check();
    assert_eq!(code, 1);
    only_vm_a_underlay_is_the_cause(&r);
    let (code, r) = up_again(&uni);
    assert_eq!(code, 0, "{:#}", r["failures"]);
    assert_eq!(addresses(&uni, "vm-a", "eth0"), ["192.168.94.2/24"]);
    // Exactly the plan's flood entries in vm-b: one per peer, none left for .22.
    assert_eq!(flood_dsts(&uni, "vm-b"), ["192.168.94.2", "192.168.94.4"]);
    assert_eq!(uni.check().0, 0);
    uni.down_leaves_nothing();

    // Static FDB: vm-a's vxlan0 deleted. The fix is the plan's own lines; `up` makes the
    // device again with every static entry, and nothing else.
    let (st, r) = static_up("t-r-strows", "192.168.95.");
    let mac = |g: &str| vtep(&r, g, "vxlan0")["mac"].as_str().unwrap().to_string();
    let (mac_b, mac_c) = (mac("vm-b"), mac("vm-c"));
    student(&st, "vm-a", &["ip", "link", "del", "vxlan0"]);
    let (code, r) = st.check();
    assert_eq!(code, 1);
    let c = first_cause(&r);
    assert_eq!(c["guest"], "vm-a", "{c:#}");
    let fix: Vec<&str> = c["fix"]["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert!(
        fix.iter()
            .any(|l| l.starts_with("ip link add vxlan0 address 02:")),
        "{fix:?}"
    );
    assert!(
        fix.contains(&format!("bridge fdb append {mac_b} dev vxlan0 dst 192.168.95.3").as_str())
            || fix.contains(
                &format!("bridge fdb replace {mac_b} dev vxlan0 dst 192.168.95.3").as_str()
            ),
        "the static entries are part of the fix: {fix:?}"
    );
    let (code, r) = up_again(&st);
    assert_eq!(code, 0, "{:#}", r["failures"]);
    let mut entries: Vec<(String, String)> = kernel(
        &st,
        "vm-a",
        &["bridge", "-j", "fdb", "show", "dev", "vxlan0"],
    )
    .as_array()
    .unwrap()
    .iter()
    .filter(|e| e["mac"] != "00:00:00:00:00:00" && e["dst"].is_string())
    .map(|e| {
        (
            e["mac"].as_str().unwrap().to_string(),
            e["dst"].as_str().unwrap().to_string(),
        )
    })
    .collect();
    entries.sort();
    let mut want = vec![
        (mac_b, "192.168.95.3".to_string()),
        (mac_c, "192.168.95.4".to_string()),
    ];
    want.sort();
    assert_eq!(entries, want);
    assert_eq!(st.check().0, 0);
    st.down_leaves_nothing();
}

#[test]
fn a_peers_address_on_another_device_is_the_cause_and_up_removes_it() {
    let lab = seed("t-r-lo", "192.168.61.");
    // vm-b's overlay address on vm-a's loopback: vm-a answers its own pings to vm-b.
    student(
        &lab,
        "vm-a",
        &["ip", "addr", "add", "192.168.42.3/32", "dev", "lo"],
    );
    let (code, r) = lab.check();
    assert_eq!(code, 1);
    let c = first_cause(&r);
    assert_eq!(
        (c["guest"].as_str(), c["layer"].as_str(), c["kind"].as_str()),
        (Some("vm-a"), Some("overlay_address"), Some("extra_address"))
    );
    assert_eq!(c["device"], "lo");
    assert!(
        c["what"].as_str().unwrap().contains("vm-b's address"),
        "{c:#}"
    );
    assert_eq!(
        c["fix"]["commands"],
        serde_json::json!(["ip addr del 192.168.42.3/32 dev lo"])
    );
    let (code, r) = up_again(&lab);
    assert_eq!(code, 0, "{:#}", r["failures"]);
    assert_eq!(repairs(&r), ["vm-a: ip addr del 192.168.42.3/32 dev lo"]);
    assert!(addresses(&lab, "vm-a", "lo").is_empty());
    assert_eq!(lab.check().0, 0);
    lab.down_leaves_nothing();
}

#[test]
fn arp_turned_off_on_a_vtep_is_the_cause_and_up_turns_it_on() {
    let lab = seed("t-r-arp", "192.168.62.");
    student(&lab, "vm-a", &["ip", "link", "set", "vxlan0", "arp", "off"]);
    for g in ["vm-a", "vm-b"] {
        student(&lab, g, &["ip", "neigh", "flush", "dev", "vxlan0"]);
    }
    let (code, r) = lab.check();
    assert_eq!(code, 1);
    let c = first_cause(&r);
    assert_eq!(
        (c["guest"].as_str(), c["layer"].as_str(), c["kind"].as_str()),
        (Some("vm-a"), Some("vxlan_device"), Some("arp"))
    );
    assert_eq!(
        c["fix"]["commands"],
        serde_json::json!(["ip link set dev vxlan0 arp on"])
    );
    let (code, r) = up_again(&lab);
    assert_eq!(code, 0, "{:#}", r["failures"]);
    assert_eq!(repairs(&r), ["vm-a: ip link set dev vxlan0 arp on"]);
    let link = kernel(&lab, "vm-a", &["ip", "-j", "link", "show", "dev", "vxlan0"]);
    assert!(
        !link[0]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "NOARP"),
        "{link:#}"
    );
    lab.down_leaves_nothing();
}

#[test]
fn a_neighbour_set_by_hand_is_flagged_and_reset_leaves_none() {
    let lab = seed("t-r-perm", "192.168.63.");
    // The right MAC, set by hand: pings work, but no ARP will ever be sent for vm-b.
    let peer_mac = kernel(&lab, "vm-b", &["ip", "-j", "link", "show", "dev", "vxlan0"])[0]
        ["address"]
        .as_str()
        .unwrap()
        .to_string();
    student(
        &lab,
        "vm-a",
        &[
            "ip",
            "neigh",
            "replace",
            "192.168.42.3",
            "lladdr",
            &peer_mac,
            "dev",
            "vxlan0",
            "nud",
            "permanent",
        ],
    );
    let (code, r) = lab.check();
    assert_eq!(code, 1);
    let c = first_cause(&r);
    assert_eq!(
        (c["guest"].as_str(), c["kind"].as_str()),
        (Some("vm-a"), Some("extra_neighbour"))
    );
    assert!(c["what"].as_str().unwrap().contains("permanent"), "{c:#}");
    let out = lab.run(&["reset", "--json", &lab.name, "vm-a"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let neighbours = kernel(
        &lab,
        "vm-a",
        &["ip", "-j", "neigh", "show", "dev", "vxlan0"],
    );
    assert!(
        neighbours.as_array().is_none_or(|n| n.is_empty()),
        "{neighbours:#}"
    );
    assert_eq!(lab.check().0, 0);
    lab.down_leaves_nothing();
}

#[test]
fn a_deleted_underlay_is_repaired_by_up_which_says_so() {
    let lab = seed("t-r-eth", "192.168.64.");
    student(&lab, "vm-a", &["ip", "link", "del", "eth0"]);
    let (code, r) = lab.check();
    assert_eq!(code, 1);
    let c = first_cause(&r);
    assert_eq!(
        (c["guest"].as_str(), c["layer"].as_str(), c["kind"].as_str()),
        (Some("vm-a"), Some("underlay_link"), Some("link_exists"))
    );
    assert_eq!(c["fix"]["vxlab"], "vxlab up t-r-eth");
    let (code, r) = up_again(&lab);
    assert_eq!(code, 0, "{:#}", r["failures"]);
    assert!(
        noted(&r, &["vm-a: repaired on the host", "eth0", "was gone"]),
        "{:#}",
        r["notes"]
    );
    assert_eq!(lab.check().0, 0);
    lab.down_leaves_nothing();
}
