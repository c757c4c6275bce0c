//! The class server in a real browser: three copies of the seed lab on real namespaces,
//! `vxlab serve`, and headless Chromium driven over WebDriver (chromedriver) as an instructor
//! and a student would use it. Screenshots of every page land in the test's output folder
//! (`target/tmp/class_server/`). Needs root, chromium and chromium-driver; on a shared machine
//! run it inside `/work/tools/isolated.sh` (server, browser and labs in one network namespace).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::browser::{
    browser, chromedriver, click, screenshot, serve, type_in_terminal, wait_for,
};
use common::Lab;
use fantoccini::Locator;
use serde_json::json;

/// The copies of the lab, removed when the test ends however it ends.
struct Copies(Lab);

impl Drop for Copies {
    fn drop(&mut self) {
        let _ = self.0.run(&["down", &self.0.name, "--all"]);
    }
}

/// A raw HTTP/1.1 request to the server; its status code.
fn status(base: &str, method: &str, path: &str, websocket: bool) -> u16 {
    status_from(base, method, path, websocket, None)
}

/// [`status`], sent as a browser on page `origin` sends it.
fn status_from(base: &str, method: &str, path: &str, websocket: bool, origin: Option<&str>) -> u16 {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    let hostport = base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut s = TcpStream::connect(&hostport).unwrap();
    let upgrade = if websocket {
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    } else {
        "Connection: close\r\n"
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\n{origin}{upgrade}Content-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    String::from_utf8_lossy(&head[9..12]).parse().unwrap()
}

/// A plain GET (the connection closed after it); its whole answer, head and body.
fn get(base: &str, path: &str) -> String {
    request(base, "GET", path)
}

/// A plain request of `method` (the connection closed after it); its whole answer.
fn request(base: &str, method: &str, path: &str) -> String {
    let hostport = base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap();
    let mut s = TcpStream::connect(hostport).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

/// Waits until lab `lab` has a row in the instructor's grid shown in `c`, or has none.
async fn in_grid(c: &fantoccini::Client, lab: &str, present: bool, what: &str) {
    let op = if present { "!==" } else { "===" };
    let js =
        format!("return document.querySelector('#grid-rows tr[data-lab=\"{lab}\"]') {op} null");
    wait_for(c, 10, what, &js).await;
}

/// The path of a URL (`http://host:port/path` -> `/path`).
fn path_of(url: &str) -> String {
    let rest = url.trim_start_matches("http://");
    rest[rest.find('/').unwrap()..].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_in_the_browser_instructor_grid_student_page_terminal_and_tokens() {
    let lab = Lab::shipped("two-netns.yaml", "cls", &[]);
    let file = lab.file.to_str().unwrap().to_string();
    let out = lab.run(&["up", &file, "--count", "3"]);
    let copies = Copies(lab);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lab = &copies.0;
    // The fence is read again every second here (30 by default), so that the test sees a
    // rule deleted on the host reach the grid with nothing pressed.
    let (server, instructor) = serve(lab, &["--fence-every", "1"]);
    let base = instructor.split("/t/").next().unwrap().to_string();
    let sheet = lab.run(&["sheet", "cls", "--format", "csv", "--url", &base]);
    let sheet = String::from_utf8(sheet.stdout).unwrap();
    let mut lines = sheet.lines();
    assert_eq!(lines.next(), Some("instance,lab,url,guests"));
    let students: Vec<String> = lines
        .map(|l| l.split(',').nth(2).unwrap().to_string())
        .collect();
    assert_eq!(students.len(), 3, "{sheet}");
    assert!(students[0].contains("/lab/cls-1/"), "{sheet}");
    assert!(
        sheet.lines().nth(1).unwrap().starts_with("1,cls-1,http"),
        "{sheet}"
    );
    // Without --url the sheet links to the server that runs, on whatever port it listens.
    let recorded = lab.run(&["sheet", "cls", "--format", "csv"]);
    assert_eq!(String::from_utf8(recorded.stdout).unwrap(), sheet);

    let (_driver, port) = chromedriver();
    let profile = tempfile::tempdir().unwrap();
    let c = browser(port, profile.path()).await;

    // The instructor sees the three copies, all healthy.
    c.goto(&instructor).await.unwrap();
    wait_for(
        &c,
        20,
        "three healthy copies",
        "return document.querySelectorAll('#grid-rows tr.healthy').length === 3",
    )
    .await;
    let labs = c
        .execute(
            "return [...document.querySelectorAll('#grid-rows tr')].map(r => r.dataset.lab)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(labs, json!(["cls-1", "cls-2", "cls-3"]));
    // Each row's student page is the student's own link, as on the sheet (the instructor's
    // token would open every copy to whoever it was passed on to).
    let link = c
        .execute(
            "return document.querySelector('#row-cls-1 a.button').getAttribute('href')",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(link, json!(path_of(&students[0])));
    screenshot(&c, "class_server", "instructor-healthy.png").await;

    // A copy brought up while the page is open shows up in the grid, and goes when it is
    // taken down: the server watches the state directory (its own rescan is once a minute).
    lab.run_ok(&["up", &file, "--instance", "4"]);
    in_grid(&c, "cls-4", true, "the fourth copy in the grid").await;
    // A terminal into copy 4 (the instructor's link opens every copy's), and its shell's
    // processes on the host, under copy 4's student uid.
    let token_of = |copy: &str| {
        std::fs::read_to_string(lab.state.path().join(copy).join("web.token"))
            .unwrap()
            .trim()
            .to_string()
    };
    let made_of = |copy: &str| -> String {
        let st: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(lab.state.path().join(copy).join("state.json")).unwrap(),
        )
        .unwrap();
        st["made"].as_str().unwrap().to_string()
    };
    let first_run = (token_of("cls-4"), made_of("cls-4"));
    let uid = vxlab::terminal::student_uid("cls-4", &first_run.1);
    let processes_of = |uid: u32| {
        let out = std::process::Command::new("pgrep")
            .args(["-u", &uid.to_string()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    // From copy 4's student page (which opens terminals of its own too).
    let copy4 = format!("{base}/t/{}/lab/cls-4/", first_run.0);
    c.goto(&copy4).await.unwrap();
    c.execute(
        "window.t4 = { text: '', code: null };
         const ws = new WebSocket('ws://' + location.host + arguments[0]);
         ws.binaryType = 'arraybuffer';
         ws.onmessage = e => { window.t4.text += new TextDecoder().decode(e.data); };
         ws.onclose = e => { window.t4.code = e.code; };",
        vec![json!(format!("{}term/vm-a", path_of(&copy4)))],
    )
    .await
    .unwrap();
    wait_for(
        &c,
        10,
        "a shell in copy 4",
        "return window.t4.text.includes('cls-4/vm-a#')",
    )
    .await;
    assert!(processes_of(uid) > 0, "no shell runs as uid {uid}");
    lab.run_ok(&["down", "cls", "--instance", "4"]);
    // The student's page says the lab is gone from this link, and stops reconnecting.
    let banner = wait_for(
        &c,
        10,
        "copy 4's page saying it is gone",
        "const g = document.getElementById('gone'); return g && !g.hidden ? g.innerText : false",
    )
    .await;
    assert!(
        banner
            .as_str()
            .unwrap()
            .contains("no longer running under this link"),
        "{banner}"
    );
    screenshot(&c, "class_server", "student-lab-gone.png").await;
    // Its terminal closes, and the shell in it ends (down ends every process in the copy's
    // namespaces): it does not outlive the copy, keeping its namespace alive, until the idle
    // time.
    let said = wait_for(
        &c,
        10,
        "copy 4's terminal closed",
        "return window.t4.code !== null ? window.t4 : false",
    )
    .await;
    assert_eq!(said["code"], json!(1000), "{said}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while processes_of(uid) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "copy 4's shell outlived it"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    c.goto(&instructor).await.unwrap();
    in_grid(&c, "cls-4", false, "the fourth copy gone from the grid").await;
    // Copy 4 brought up again is another run: a new token (the first run's link opens
    // nothing), another mark, so another student uid.
    lab.run_ok(&["up", &file, "--instance", "4"]);
    in_grid(&c, "cls-4", true, "copy 4 again in the grid").await;
    let second_run = (token_of("cls-4"), made_of("cls-4"));
    assert_ne!(second_run.0, first_run.0);
    assert_ne!(
        vxlab::terminal::student_uid("cls-4", &second_run.1),
        uid,
        "the same student uid for another run"
    );
    let page = |token: &str| format!("/t/{token}/lab/cls-4/");
    assert_eq!(status(&base, "GET", &page(&first_run.0), false), 403);
    assert_eq!(status(&base, "GET", &page(&second_run.0), false), 200);
    lab.run_ok(&["down", "cls", "--instance", "4"]);
    in_grid(&c, "cls-4", false, "the fourth copy gone from the grid").await;

    // Copy 1 as `up` derived it, on the underlay the workshop pool gave it.
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(lab.state.path().join("cls-1/state.json")).unwrap(),
    )
    .unwrap();
    let underlay = state["instance"]["underlay"]
        .as_str()
        .map(|u| u.parse().unwrap());
    let copy1 = vxlab::plan::plan(
        &vxlab::lab::instance::derive(&vxlab::lab::load(&lab.file).unwrap(), "1", 1, underlay)
            .unwrap(),
    );
    let vm_b = copy1.guest("vm-b").unwrap();
    let (mac_b, vtep_b) = (vm_b.vteps[0].mac.to_string(), vm_b.underlay.addr());

    // The student's page: the graph, vm-a's FDB, a terminal.
    c.goto(&students[0]).await.unwrap();
    wait_for(
        &c,
        10,
        "the topology drawn",
        "const g = document.getElementById('graph'); return g.complete && g.naturalWidth > 0",
    )
    .await;
    let fdb = "document.querySelector('#tables-vm-a table[data-table=\"fdb vxlan0\"]')";
    wait_for(
        &c,
        10,
        "vm-a's FDB table",
        &format!("return {fdb} !== null"),
    )
    .await;
    wait_for(
        &c,
        10,
        "vm-a's shell prompt",
        "const r = document.querySelector('#term-vm-a .xterm-rows'); return r && r.innerText.includes('cls-1/vm-a#')",
    )
    .await;
    // vm-a forgets what it learned (as `walk` does before its first ping), and vm-b its
    // neighbours (a neighbour entry still being confirmed sends a unicast ARP probe that would
    // teach vm-a first), so only the student's ping can teach vm-a vm-b's MAC.
    for (guest, argv) in [
        (
            "vm-a",
            vec!["bridge", "fdb", "del", &mac_b, "dev", "vxlan0", "self"],
        ),
        ("vm-a", vec!["ip", "neigh", "flush", "dev", "vxlan0"]),
        ("vm-b", vec!["ip", "neigh", "flush", "dev", "vxlan0"]),
    ] {
        lab.exec(Some("cls-1"), guest, &argv);
    }
    let before = wait_for(
        &c,
        10,
        "vm-a's FDB without vm-b",
        &format!("const t = {fdb}.innerText; return t.includes('{mac_b}') ? false : t"),
    )
    .await;
    assert!(
        before.as_str().unwrap().contains("239.1.1.1"),
        "no flood entry: {before}"
    );
    c.execute("window.vxlabMarker = 1", vec![]).await.unwrap();
    type_in_terminal(&c, "vm-a", "ping -c 1 192.168.42.3").await;
    let learned = wait_for(
        &c,
        10,
        "vm-b's MAC in vm-a's FDB table",
        &format!("const t = {fdb}.innerText; return t.includes('{mac_b}') ? t : false"),
    )
    .await;
    assert!(
        learned
            .as_str()
            .unwrap()
            .contains(&format!("learned: vm-b is behind VTEP {vtep_b}")),
        "{learned}"
    );
    // No reload happened: the marker set on this page is still there.
    assert_eq!(
        c.execute("return window.vxlabMarker", vec![])
            .await
            .unwrap(),
        json!(1)
    );
    screenshot(&c, "class_server", "student-after-ping.png").await;

    // A malformed terminal message closes that terminal only, and is answered by 1008.
    let code = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const ws = new WebSocket('ws://' + location.host + location.pathname + 'term/vm-b');
             ws.onopen = () => ws.send('this is not json');
             ws.onclose = e => done(e.code);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(code, json!(1008));
    assert_eq!(status(&base, "GET", &path_of(&students[0]), false), 200);
    // So does one far bigger than any keystroke or resize (a flood): that terminal goes,
    // the server stays.
    let code = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const ws = new WebSocket('ws://' + location.host + location.pathname + 'term/vm-b');
             ws.onopen = () => ws.send(JSON.stringify({type: 'input', data: 'x'.repeat(1 << 20)}));
             ws.onclose = e => done(e.code);",
            vec![],
        )
        .await
        .unwrap();
    // 1008 or 1009 as a rule; 1006 when the close frame loses the race with the rest of the
    // megabyte still arriving (the server closes with unread data, and TCP resets).
    assert!(
        [json!(1006), json!(1008), json!(1009)].contains(&code),
        "an oversized message closed the terminal with {code}"
    );
    assert_eq!(status(&base, "GET", &path_of(&students[0]), false), 200);

    // The student breaks the lab in the terminal: the instructor's grid marks that copy.
    type_in_terminal(&c, "vm-a", "ip link del vxlan0").await;
    c.goto(&instructor).await.unwrap();
    let cause = wait_for(
        &c,
        15,
        "cls-1 failing",
        "const r = document.getElementById('row-cls-1'); return r && r.classList.contains('failing') ? r.innerText : false",
    )
    .await;
    assert!(cause.as_str().unwrap().contains("vxlan0"), "{cause}");
    let others = c
        .execute(
            "return document.querySelectorAll('#grid-rows tr.healthy').length",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(others, json!(2));
    screenshot(&c, "class_server", "instructor-failing.png").await;

    // The grid's Check says what broke, where, and the fix.
    click(&c, "button[data-action=check][data-lab=\"cls-1\"]").await;
    let result = wait_for(
        &c,
        30,
        "the grid's check of cls-1",
        "const t = document.getElementById('result').innerText; return t.includes('checks failed') ? t : false",
    )
    .await;
    let result = result.as_str().unwrap();
    assert!(
        result.contains("vm-a: vxlan0 is missing: expected vxlan VNI 42, seen no such device")
            && result.contains(
                "fix: in vm-a's terminal on cls-1's student page `ip link add vxlan0 address 02:"
            )
            && result.contains(" type vxlan id 42 group 239.1.1.1 dev eth0 dstport 4789`")
            && result.contains("or cls-1's Reset button repairs it"),
        "{result}"
    );
    screenshot(&c, "class_server", "instructor-check.png").await;

    // Reset brings it back.
    click(&c, "button[data-action=reset][data-lab=\"cls-1\"]").await;
    wait_for(
        &c,
        30,
        "cls-1 healthy after its reset",
        "const r = document.getElementById('row-cls-1'); return r && r.classList.contains('healthy')",
    )
    .await;
    wait_for(
        &c,
        30,
        "the reset's result",
        "return document.getElementById('result').innerText.includes('was reset')",
    )
    .await;
    screenshot(&c, "class_server", "instructor-after-reset.png").await;

    // One of the rules that fence cls-2's bridge off from the host goes (an `iptables -F`, a
    // firewall reloaded): the grid, reading the fence again by itself, names the host as the
    // cause with nothing pressed, and a `vxlab up` on the command line repairs it; the grid
    // then shows it healthy.
    common::sh(
        "eval \"iptables -w $(iptables -S INPUT | grep -F '\"vxlab: cls-2\"' | head -1 | sed 's/^-A/-D/')\"",
    );
    assert_eq!(common::fence_rules("cls-2").len(), common::fence_size() - 1);
    let row = wait_for(
        &c,
        30,
        "cls-2 failing on its fence",
        "const r = document.getElementById('row-cls-2'); return r && r.classList.contains('failing') ? r.innerText : false",
    )
    .await;
    let row = row.as_str().unwrap();
    assert!(
        row.contains("host: the firewall rules that fence bridge") && row.contains("1 of"),
        "{row}"
    );
    // Its Check says what repairs it.
    click(&c, "button[data-action=check][data-lab=\"cls-2\"]").await;
    let result = wait_for(
        &c,
        30,
        "the grid's check of cls-2",
        "const t = document.getElementById('result').innerText; return t.includes('checks failed') ? t : false",
    )
    .await;
    assert!(
        result
            .as_str()
            .unwrap()
            .contains("cls-2's Reset button repairs it"),
        "{result}"
    );
    screenshot(&c, "class_server", "instructor-fence.png").await;
    let out = lab.run(&["up", "cls-2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(common::fence_rules("cls-2").len(), common::fence_size());
    wait_for(
        &c,
        30,
        "cls-2 healthy after up repaired its fence",
        "const r = document.getElementById('row-cls-2'); return r && r.classList.contains('healthy')",
    )
    .await;

    // The student page's Check and Capture buttons.
    c.goto(&students[0]).await.unwrap();
    click(&c, "button[data-action=check]").await;
    wait_for(
        &c,
        20,
        "the check's result",
        "return document.getElementById('result').innerText.includes('checks passed')",
    )
    .await;
    // The Capture button pings what its list says: vm-a offers its peer.
    let offered = c
        .find(Locator::Css("select.capture-to[data-guest=vm-a]"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        offered.contains("192.168.42.3: vm-b (vxlan0, VNI 42)"),
        "{offered}"
    );
    click(&c, "button[data-action=capture][data-guest=vm-a]").await;
    let capture = wait_for(
        &c,
        20,
        "the capture's lines",
        "const p = document.querySelector('#result pre.packets'); return p ? p.innerText : false",
    )
    .await;
    assert!(
        capture
            .as_str()
            .unwrap()
            .contains("(multicast) udp 4789 vni 42"),
        "{capture}"
    );
    screenshot(&c, "class_server", "student-capture.png").await;

    // The student breaks two guests; Check names each cause with its fix.
    let student_does = |guest: &str, argv: &[&str]| lab.exec(Some("cls-1"), guest, argv);
    student_does("vm-b", &["ip", "addr", "flush", "dev", "vxlan0"]);
    student_does("vm-a", &["bridge", "fdb", "flush", "dev", "vxlan0"]);
    click(&c, "button[data-action=check]").await;
    let causes = wait_for(
        &c,
        20,
        "the check's causes",
        "const r = document.querySelector('#result ol.diagnoses'); return r ? r.innerText : false",
    )
    .await;
    let causes = causes.as_str().unwrap();
    // Each fix is what the student can do on this page: type the plan's command in the
    // guest's terminal, or press that guest's Reset.
    assert!(
        causes.contains(
            "fix: in vm-b's terminal `ip addr add 192.168.42.3/24 dev vxlan0`, or the Reset vm-b \
             button repairs it"
        ) && causes.contains(
            "fix: in vm-a's terminal `bridge fdb append 00:00:00:00:00:00 dev vxlan0 dst \
             239.1.1.1 via eth0`, or the Reset vm-a button repairs it"
        ),
        "{causes}"
    );
    screenshot(&c, "class_server", "student-check-failing.png").await;
    let flood = |guest: &str| {
        student_does(guest, &["bridge", "fdb", "show", "dev", "vxlan0"]).contains("239.1.1.1")
    };
    // "Reset vm-b" repairs vm-b alone.
    click(&c, "button[data-action=reset][data-guest=vm-b]").await;
    wait_for(
        &c,
        20,
        "vm-b's reset",
        "return document.getElementById('result').innerText.includes('was reset')",
    )
    .await;
    assert!(
        student_does("vm-b", &["ip", "addr", "show", "dev", "vxlan0"]).contains("192.168.42.3/24")
    );
    assert!(!flood("vm-a"), "resetting vm-b touched vm-a");
    // The page says what the reset ran, as commands, each with why.
    let said: String = c
        .execute("return document.getElementById('result').innerText", vec![])
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    assert!(said.contains("What it ran, in order:"), "{said}");
    assert!(
        said.contains("vm-b: $ ip addr add 192.168.42.3/24 dev vxlan0"),
        "{said}"
    );
    // "Reset the whole lab" repairs the rest; Check then passes.
    click(&c, "button[data-action=reset]:not([data-guest])").await;
    wait_for(
        &c,
        20,
        "the lab's reset",
        "return document.getElementById('result').innerText.includes('was reset')",
    )
    .await;
    assert!(flood("vm-a"));
    click(&c, "button[data-action=check]").await;
    wait_for(
        &c,
        20,
        "the check passing after the resets",
        "return document.getElementById('result').innerText.includes('checks passed')",
    )
    .await;

    // One student's token opens nothing else: another copy's page, events, terminal and
    // reset, and the instructor's page all answer 403; its own answer.
    let own = path_of(&students[0]);
    let other = own.replace("/lab/cls-1/", "/lab/cls-2/");
    let token_root = own.split("/lab/").next().unwrap().to_string() + "/";
    assert_eq!(status(&base, "GET", &own, false), 200);
    assert_eq!(status(&base, "GET", &format!("{own}term/vm-a"), true), 101);
    // Another site cannot drive the lab with a link it got hold of: not the terminal, not a
    // POST. From the server's own page, both work.
    let evil = Some("http://evil.example");
    let term = format!("{own}term/vm-a");
    assert_eq!(status_from(&base, "GET", &term, true, evil), 403);
    assert_eq!(
        status_from(&base, "POST", &format!("{own}check"), false, evil),
        403
    );
    let here = base.trim_end_matches('/').to_string();
    assert_eq!(status_from(&base, "GET", &term, true, Some(&here)), 101);
    // The same host and port under another scheme is another origin.
    let other_scheme = here.replacen("http://", "https://", 1);
    assert_eq!(
        status_from(
            &base,
            "POST",
            &format!("{own}check"),
            false,
            Some(&other_scheme)
        ),
        403
    );
    // A link holds a few live-update streams, not a thousand (copy 3's: the page is not
    // opened again after this).
    let third = path_of(&students[2]);
    let hostport = here.trim_start_matches("http://").to_string();
    let held: Vec<TcpStream> = (0..16)
        .map(|_| {
            let mut s = TcpStream::connect(&hostport).unwrap();
            write!(s, "GET {third}events HTTP/1.1\r\nHost: {hostport}\r\n\r\n").unwrap();
            let mut head = [0u8; 12];
            s.read_exact(&mut head).unwrap();
            assert_eq!(&head[9..12], b"200");
            s
        })
        .collect();
    assert_eq!(status(&base, "GET", &format!("{third}events"), false), 429);
    drop(held);
    // Three clicks at once on one lab (two checks and a reset) each run in turn: none finds
    // the lab busy, and the reset says it was done.
    let answers: Vec<String> = std::thread::scope(|s| {
        let runs: Vec<_> = ["check", "reset", "check"]
            .iter()
            .map(|a| {
                let (base, path) = (&base, format!("{own}{a}"));
                s.spawn(move || request(base, "POST", &path))
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for a in &answers {
        assert!(a.starts_with("HTTP/1.1 200") && !a.contains("busy"), "{a}");
    }
    assert!(
        answers[1].contains("was reset to its plan"),
        "{}",
        answers[1]
    );
    assert_eq!(status(&base, "GET", &other, false), 403);
    // ... and says nothing more: not whether the copy exists, nor whose token it was.
    let answer = get(&base, &other);
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert_eq!(body, "forbidden\n", "{answer}");
    assert!(!answer.contains("cls-"), "{answer}");
    assert_eq!(status(&base, "GET", &format!("{other}events"), false), 403);
    assert_eq!(
        status(&base, "GET", &format!("{other}term/vm-a"), true),
        403
    );
    assert_eq!(status(&base, "POST", &format!("{other}reset"), false), 403);
    assert_eq!(status(&base, "POST", &format!("{other}check"), false), 403);
    assert_eq!(
        status(&base, "POST", &format!("{other}capture/vm-a"), false),
        403
    );
    assert_eq!(
        status(&base, "GET", &format!("{other}graph.svg"), false),
        403
    );
    // The same requests on its own copy are answered: the 403s above are the token's doing.
    assert_eq!(status(&base, "GET", &format!("{own}graph.svg"), false), 200);
    assert_eq!(status(&base, "POST", &format!("{own}check"), false), 200);
    // Capture pings only what the page offers: an address of the lab's own overlays.
    for bad in ["8.8.8.8", "127.0.0.1", "not-an-address", "192.168.42.3%0a"] {
        assert_eq!(
            status(&base, "POST", &format!("{own}capture/vm-a?to={bad}"), false),
            403,
            "{bad}"
        );
    }
    assert_eq!(
        status(
            &base,
            "POST",
            &format!("{own}capture/vm-a?to=192.168.42.3"),
            false
        ),
        200
    );
    // xterm.js is served with its licence, which the student's page links to.
    let page_html = get(&base, &own);
    for licence in ["/static/xterm/LICENSE", "/static/xterm/LICENSE-addon-fit"] {
        assert!(
            page_html.contains(&format!("href=\"{licence}\"")),
            "{page_html}"
        );
        let text = get(&base, licence);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("Permission is hereby granted"), "{text}");
    }
    assert_eq!(status(&base, "GET", &token_root, false), 403);
    assert_eq!(
        status(&base, "GET", &format!("{token_root}events"), false),
        403
    );
    // A guest that is not the lab's, and a made-up token.
    assert_eq!(status(&base, "GET", &format!("{own}term/host"), true), 403);
    let forged = own.replacen("/t/", "/t/0", 1);
    assert_eq!(status(&base, "GET", &forged, false), 403);
    // A link typed without its last `/` is sent to the page, only with a token that opens it.
    let answer = get(&base, own.trim_end_matches('/'));
    assert!(
        answer.starts_with("HTTP/1.1 308") && answer.contains(&format!("location: {own}\r\n")),
        "{answer}"
    );
    assert_eq!(
        status(&base, "GET", other.trim_end_matches('/'), false),
        403
    );
    assert_eq!(
        status(&base, "GET", token_root.trim_end_matches('/'), false),
        403
    );

    // A paste bigger than the largest message the server takes reaches the shell whole:
    // the page sends it in pieces.
    c.goto(&students[0]).await.unwrap();
    wait_for(
        &c,
        10,
        "vm-a's shell prompt",
        "const r = document.querySelector('#term-vm-a .xterm-rows'); return r && r.innerText.includes('cls-1/vm-a#')",
    )
    .await;
    c.execute(
        "const dt = new DataTransfer();
         dt.setData('text/plain', 'printf %s ' + 'x'.repeat(100000) + ' | wc -c');
         document.querySelector('#term-vm-a .xterm-helper-textarea')
           .dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }));",
        vec![],
    )
    .await
    .unwrap();
    type_in_terminal(&c, "vm-a", "").await;
    wait_for(
        &c,
        20,
        "the pasted 100000 characters counted in vm-a",
        "const r = document.querySelector('#term-vm-a .xterm-rows'); return r.innerText.split('\\n').some(l => l.trim() === '100000')",
    )
    .await;

    // Each terminal is as wide as its box, in a wide window and in a narrow one.
    let fits = "const b = document.getElementById('term-vm-a');
                const s = b.querySelector('.xterm-screen');
                return s && s.offsetWidth <= b.clientWidth && s.offsetWidth > 0.85 * b.clientWidth";
    wait_for(&c, 10, "vm-a's terminal as wide as its box", fits).await;
    c.set_window_size(700, 1800).await.unwrap();
    wait_for(&c, 10, "vm-a's terminal fitted to a narrow window", fits).await;
    screenshot(&c, "class_server", "student-narrow.png").await;
    c.set_window_size(1400, 1800).await.unwrap();

    // A guest made anew by a reset from the command line is followed again: cls-2's vm-b
    // loses its namespace, `vxlab reset cls-2` makes it anew, and a change in the new one
    // reaches the grid.
    c.goto(&instructor).await.unwrap();
    let copy2 = vxlab::plan::plan(
        &vxlab::lab::instance::derive(
            &vxlab::lab::load(&lab.file).unwrap(),
            "2",
            2,
            serde_json::from_str::<serde_json::Value>(
                &std::fs::read_to_string(lab.state.path().join("cls-2/state.json")).unwrap(),
            )
            .unwrap()["instance"]["underlay"]
                .as_str()
                .map(|u| u.parse().unwrap()),
        )
        .unwrap(),
    );
    let ns = copy2.guest("vm-b").unwrap().instance.clone();
    // A terminal into vm-b is open when its namespace is deleted by hand. Its shell alone
    // would keep the old namespace alive, devices and all, beside the one a reset makes: the
    // terminal is closed, says why, and its shell ends.
    c.execute(
        "window.t2 = { text: '', code: null };
         const ws = new WebSocket('ws://' + location.host + arguments[0]);
         ws.binaryType = 'arraybuffer';
         ws.onmessage = e => { window.t2.text += new TextDecoder().decode(e.data); };
         ws.onclose = e => { window.t2.code = e.code; };",
        vec![json!(format!("{}term/vm-b", path_of(&students[1])))],
    )
    .await
    .unwrap();
    wait_for(
        &c,
        10,
        "a shell in cls-2's vm-b",
        "return window.t2.text.includes('cls-2/vm-b#')",
    )
    .await;
    let uid2 = vxlab::terminal::student_uid("cls-2", &made_of("cls-2"));
    assert!(processes_of(uid2) > 0, "no shell runs as uid {uid2}");
    common::sh(&format!("ip netns del {ns}"));
    // Seen at once: the grid marks the copy, with no Check pressed.
    let gone = wait_for(
        &c,
        10,
        "cls-2 failing once vm-b's namespace is gone",
        "const r = document.getElementById('row-cls-2'); return r && r.classList.contains('failing') ? r.innerText : false",
    )
    .await;
    assert!(gone.as_str().unwrap().contains("vm-b"), "{gone}");
    let said = wait_for(
        &c,
        10,
        "vm-b's terminal closed",
        "return window.t2.code !== null ? window.t2 : false",
    )
    .await;
    assert_eq!(said["code"], json!(1000), "{said}");
    assert!(
        said["text"].as_str().unwrap().contains(
            "[vm-b's namespace was deleted: this terminal is closed; Reset makes vm-b anew]"
        ),
        "{said}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while processes_of(uid2) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the shell in vm-b's deleted namespace lives on"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = lab.run(&["reset", "cls-2"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("created anew"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        &c,
        15,
        "cls-2 healthy after its guest was made anew",
        "const r = document.getElementById('row-cls-2'); return r && r.classList.contains('healthy')",
    )
    .await;
    lab.exec(
        Some("cls-2"),
        "vm-b",
        &["ip", "link", "set", "vxlan0", "down"],
    );
    let cause = wait_for(
        &c,
        10,
        "cls-2 failing after a change in its new vm-b",
        "const r = document.getElementById('row-cls-2'); return r && r.classList.contains('failing') ? r.innerText : false",
    )
    .await;
    assert!(cause.as_str().unwrap().contains("vm-b"), "{cause}");
    // While another vxlab changes a copy (an `up` making it, a `reset`), what its half-made
    // guests show is no failure yet: the row says who is at work instead, and turns back when
    // it lets go. The test takes cls-2's lock with vxlab's own call, as a running vxlab does.
    let held = vxlab::state::StateDir::at(lab.state.path())
        .lock("cls-2")
        .expect("cls-2's lock is free");
    let busy = wait_for(
        &c,
        10,
        "cls-2 marked as being changed, not failing",
        "const r = document.getElementById('row-cls-2'); return r && r.classList.contains('busy') ? r.innerText : false",
    )
    .await;
    let busy = busy.as_str().unwrap();
    assert!(
        busy.contains("being changed by class_server")
            && busy.contains(&format!("(pid {})", std::process::id()))
            && !busy.contains("fix:"),
        "{busy}"
    );
    screenshot(&c, "class_server", "instructor-busy.png").await;
    drop(held);
    wait_for(
        &c,
        10,
        "cls-2 failing again once no one changes it",
        "const r = document.getElementById('row-cls-2'); return r && r.classList.contains('failing')",
    )
    .await;
    let out = lab.run(&["reset", "cls-2"]);
    assert!(out.status.success());

    // A link holds a few terminals at most, and idle ones close: a second server allows two,
    // idle for one second. From the student's page, three terminals to it: two open and are
    // closed when idle (1000), the third is refused.
    // One server per state directory: a second is refused while the first runs.
    let out = lab.run(&["serve", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a class server already serves"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(server);
    let (_strict, strict) = serve(lab, &["--terminals", "2", "--idle-timeout", "1"]);
    let strict_host = strict
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap();
    // From a page of that server (its front page, which opens no terminal of its own): a
    // terminal's websocket from another origin is refused.
    c.goto(&format!("http://{strict_host}/")).await.unwrap();
    let codes = c
        .execute_async(
            "const [url, done] = [arguments[0], arguments[arguments.length - 1]];
             const codes = [];
             const open = () => new Promise(r => {
               const ws = new WebSocket(url);
               ws.onclose = e => { codes.push(e.code + ' ' + e.reason); r(); };
             });
             const first = [open(), open()];
             setTimeout(() => { first.push(open()); Promise.all(first).then(() => done(codes.sort())); }, 300);",
            vec![json!(format!("ws://{strict_host}{own}term/vm-a"))],
        )
        .await
        .unwrap();
    assert_eq!(
        codes,
        json!(["1000 idle", "1000 idle", "1013 too many terminals"]),
        "two closed as idle, one refused (try again later)"
    );

    // The printable access sheet, as the browser shows it.
    let html = lab.run(&["sheet", "cls", "--format", "html", "--url", &base]);
    let sheet_file = common::browser::out_dir("class_server").join("sheet.html");
    std::fs::write(&sheet_file, &html.stdout).unwrap();
    c.goto(&format!("file://{}", sheet_file.display()))
        .await
        .unwrap();
    let cards = c
        .execute(
            "return document.querySelectorAll('article.card').length",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(cards, json!(3));
    screenshot(&c, "class_server", "sheet.png").await;

    c.close().await.unwrap();
}

#[test]
fn with_a_certificate_the_server_speaks_only_tls() {
    let lab = Lab::shipped(
        "two-netns.yaml",
        "cls-tls",
        &[("192.168.10.", "192.168.29.")],
    );
    assert_eq!(lab.up().0, 0);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    common::sh(&format!(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
         -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -keyout '{}' -out '{}'",
        key.display(),
        cert.display()
    ));
    let (server, instructor) = serve(
        &lab,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(instructor.starts_with("https://127.0.0.1:"), "{instructor}");
    // A client that trusts the certificate gets the instructor's page over TLS.
    let curl = |url: &str, extra: &[&str]| {
        std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "10",
            ])
            .args(extra)
            .arg(url)
            .output()
            .unwrap()
    };
    let ok = curl(&instructor, &["--cacert", cert.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "200");
    // One that does not is refused by its own TLS check, and plain HTTP gets no page.
    // curl's exit 60: the peer's certificate cannot be verified.
    let untrusted = curl(&instructor, &[]);
    assert_eq!(untrusted.status.code(), Some(60), "{untrusted:?}");
    // No HTTP answer at all (curl reports status 000): the port speaks only TLS.
    let plain = curl(&instructor.replacen("https://", "http://", 1), &[]);
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "000", "{plain:?}");
    assert!(!plain.status.success(), "{plain:?}");
    // A browser speaks HTTP/2 over TLS, where the server is named in the request's
    // authority, not a Host header: an action from the server's own page is answered, one
    // from another site refused.
    let site = instructor.split("/t/").next().unwrap().to_string();
    let post = |origin: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
            ])
            .args(["--max-time", "20", "--http2", "-X", "POST"])
            .args(["--cacert", cert.to_str().unwrap()])
            .args(["-H", &format!("Origin: {origin}")])
            .arg(format!("{instructor}lab/cls-tls/check"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(post(&site), "200 2");
    assert_eq!(post("https://evil.example"), "403 2");
    let token = std::fs::read_dir(lab.state.path())
        .unwrap()
        .flatten()
        .find(|e| e.file_name() == "instructor.token")
        .map(|e| e.path())
        .expect("serve keeps the instructor's token in the state directory");
    std::fs::remove_file(token).unwrap();
    // The server stopped takes its record (its address, for `sheet`) with it.
    drop(server);
    lab.down_leaves_nothing();
}

#[test]
fn the_sheet_holds_the_students_copies_and_not_the_instructors_own_run() {
    let lab = Lab::shipped("two-netns.yaml", "t-sh", &[("192.168.10.", "192.168.87.")]);
    let file = lab.file.to_str().unwrap().to_string();
    let copies = Copies(lab);
    let lab = &copies.0;
    let labs_on_sheet = || {
        let out = lab.run(&[
            "sheet",
            "t-sh",
            "--format",
            "csv",
            "--url",
            "http://10.0.0.5:8080",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').nth(1).unwrap().to_string())
            .collect::<Vec<_>>()
    };
    // One lab run on its own is one student's lab: its card.
    assert_eq!(lab.up().0, 0);
    assert_eq!(labs_on_sheet(), ["t-sh"]);
    // With copies running, the cards are the copies' only.
    let out = lab.run(&["up", &file, "--count", "2", "--pool", "10.241.0.0/22"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(labs_on_sheet(), ["t-sh-1", "t-sh-2"]);
    let out = lab.run(&["down", "t-sh"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
