//! The class benchmark's client, run by `scripts/bench-class.sh` (ignored by `cargo test`: it
//! times things, it asserts nothing about time). It behaves like one browser page per copy:
//! the page's event stream (server-sent events) and one terminal (websocket) each. It
//! measures the server's CPU while idle and while students type, its memory, and the latency
//! from a command typed in a guest's terminal to the change on that copy's page.
//!
//! The other benchmark opens the pages for real: every copy's student page (graph, tables,
//! xterm.js terminal) in a tab of headless Chromium, five tabs a browser, and the latency runs
//! from a change made in a guest to the moment the tab's page shows it.
//!
//! Input from the script, in the environment: BENCH_SHEET (the `vxlab sheet --format csv`
//! output), BENCH_PID (the server's pid), BENCH_SECONDS (length of each phase).

mod common;

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Clock ticks per second of /proc's CPU times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// CPU seconds (user + system) of process `pid` and of the children it has reaped (the `ip`
/// commands that read the guests).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // Fields 14-17 (utime, stime, cutime, cstime), counted from the state at index 0 = field 3.
    (f[11] + f[12] + f[13] + f[14]) / TICKS
}

/// Resident memory of `pid` in MiB, and of the processes it started (shells, ip monitor).
fn memory_mib(pid: u32) -> (f64, f64, usize) {
    let rss = |p: u32| -> f64 {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            })
            .unwrap_or(0.0)
            / 1024.0
    };
    let mut children = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        if after.split_whitespace().nth(1) == Some(&pid.to_string()) {
            children.push(p);
        }
    }
    (
        rss(pid),
        children.iter().map(|&p| rss(p)).sum(),
        children.len(),
    )
}

/// Opens a copy's event stream; every `guest` event's data goes to `tx` with its arrival time.
async fn events(
    host: String,
    path: String,
    tx: mpsc::UnboundedSender<(usize, Instant, String)>,
    i: usize,
) {
    let mut s = TcpStream::connect(&host).await.unwrap();
    s.write_all(
        format!("GET {path}events HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut lines = BufReader::new(s).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(data) = line.strip_prefix("data: ") {
            let _ = tx.send((i, Instant::now(), data.to_string()));
        }
    }
}

/// The sheet's student URLs, in copy order, and each copy's name.
fn sheet() -> Vec<(String, String)> {
    std::env::var("BENCH_SHEET")
        .expect("BENCH_SHEET")
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_string(), f[2].to_string())
        })
        .collect()
}

/// Resident and proportional memory in MiB of every process whose command is `name`.
fn memory_of(name: &str) -> (f64, f64, usize) {
    let (mut rss, mut pss, mut n) = (0.0, 0.0, 0);
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let dir = e.path();
        if !std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim() == name) {
            continue;
        }
        let Ok(rollup) = std::fs::read_to_string(dir.join("smaps_rollup")) else {
            continue;
        };
        let field = |key: &str| -> f64 {
            rollup
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1024.0
        };
        rss += field("Rss:");
        pss += field("Pss:");
        n += 1;
    }
    (rss, pss, n)
}

/// Prints the latencies (`INFINITY` for a change never seen) and the server's CPU, idle and
/// while `rate` changes a second came.
fn print_figures(what: &str, mut latencies: Vec<f64>, (idle, busy, rate): (f64, f64, f64)) {
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let lost = latencies.iter().filter(|l| l.is_infinite()).count();
    println!(
        "latency, {what}: {} changes, median {:.0} ms, p95 {:.0} ms, max {:.0} ms, \
         not seen within 5 s: {lost}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.95),
        latencies.last().unwrap()
    );
    println!("server CPU, idle: {idle:.1} % of one core");
    println!("server CPU, while {rate:.0} changes/s: {busy:.1} % of one core");
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by scripts/bench-class.sh"]
async fn thirty_students_type_while_the_server_follows() {
    let pid: u32 = std::env::var("BENCH_PID").unwrap().parse().unwrap();
    let phase =
        Duration::from_secs(std::env::var("BENCH_SECONDS").map_or(10, |s| s.parse().unwrap()));
    let urls: Vec<String> = sheet().into_iter().map(|(_, url)| url).collect();
    let n = urls.len();
    let host = urls[0]
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let paths: Vec<String> = urls
        .iter()
        .map(|u| {
            let rest = u.trim_start_matches("http://");
            rest[rest.find('/').unwrap()..].to_string()
        })
        .collect();

    // One page per copy: its event stream and vm-a's terminal.
    let (tx, mut rx) = mpsc::unbounded_channel();
    for (i, p) in paths.iter().enumerate() {
        tokio::spawn(events(host.clone(), p.clone(), tx.clone(), i));
    }
    let mut terminals = Vec::new();
    for p in &paths {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{host}{p}term/vm-a"))
            .await
            .expect("terminal");
        let (mut sink, mut stream) = ws.split();
        sink.send(Message::text(r#"{"type":"resize","cols":100,"rows":20}"#))
            .await
            .unwrap();
        // Drain the terminal's output, as xterm.js would.
        tokio::spawn(async move { while stream.next().await.is_some() {} });
        terminals.push(sink);
    }
    // Let the first events and prompts arrive and settle.
    let settle = Instant::now() + Duration::from_secs(3);
    while tokio::time::timeout_at(settle.into(), rx.recv())
        .await
        .is_ok()
    {}

    let (rss, children_rss, children) = memory_mib(pid);
    let cpu0 = cpu_seconds(pid);
    tokio::time::sleep(phase).await;
    let idle = (cpu_seconds(pid) - cpu0) / phase.as_secs_f64() * 100.0;

    // Students type: one change every 100 ms, round the class, each timed to its page.
    let mut latencies = Vec::new();
    let cpu1 = cpu_seconds(pid);
    let started = Instant::now();
    let mut k = 0usize;
    while started.elapsed() < phase {
        let i = k % n;
        let mtu = 1300 + (k % 100) as u32;
        let cmd = format!("ip link set vxlan0 mtu {mtu}\r");
        let sent = Instant::now();
        terminals[i]
            .send(Message::text(
                serde_json::json!({"type": "input", "data": cmd}).to_string(),
            ))
            .await
            .unwrap();
        let want = format!("<td>{mtu}</td>");
        let deadline = sent + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
                Ok(Some((j, at, data))) if j == i && data.contains(&want) => {
                    latencies.push((at - sent).as_secs_f64() * 1000.0);
                    break;
                }
                Ok(Some(_)) => {}
                _ => {
                    latencies.push(f64::INFINITY);
                    break;
                }
            }
        }
        k += 1;
        let next = sent + Duration::from_millis(100);
        tokio::time::sleep_until(next.into()).await;
    }
    let busy = (cpu_seconds(pid) - cpu1) / started.elapsed().as_secs_f64() * 100.0;
    let (rss_after, children_after, _) = memory_mib(pid);
    println!("copies with a page and a terminal open: {n}");
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    print_figures(
        "command typed in a guest's terminal -> change on its page",
        latencies,
        (idle, busy, rate),
    );
    println!(
        "server memory: {rss:.0} MiB resident ({rss_after:.0} MiB after the changes); \
         its {children} processes (shells, ip monitor): {children_rss:.0} MiB ({children_after:.0} MiB after)"
    );
}

/// Installed in each tab: the time (ms since the epoch) each MTU first shows in vm-a's link
/// table, in `window.vxlabSeen`.
const WATCH_MTU: &str = "
    window.vxlabSeen = {};
    const look = () => {
      for (const tr of document.querySelectorAll('#tables-vm-a tr')) {
        const td = tr.querySelectorAll('td');
        if (td.length > 3 && td[0].innerText.trim() === 'vxlan0') {
          const mtu = td[3].innerText.trim();
          if (!(mtu in window.vxlabSeen)) window.vxlabSeen[mtu] = Date.now();
        }
      }
    };
    new MutationObserver(look).observe(document.body,
      {subtree: true, childList: true, characterData: true});
    look();
    return true;";

fn epoch_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by scripts/bench-class.sh with BENCH_PAGES=browser"]
async fn thirty_student_pages_in_a_real_browser() {
    use common::browser::{browser_with, chromedriver, wait_for};
    let copies = sheet();
    let pid: u32 = std::env::var("BENCH_PID").unwrap().parse().unwrap();
    let phase =
        Duration::from_secs(std::env::var("BENCH_SECONDS").map_or(10, |s| s.parse().unwrap()));
    let (_driver, port) = chromedriver();
    // A browser keeps at most 6 HTTP/1.1 connections to one server, and every page holds one
    // open for its event stream: a browser holds 5 pages here (each student has a browser of
    // their own in class), each in a tab.
    let per_browser = 5;
    let profiles: Vec<tempfile::TempDir> = (0..copies.len().div_ceil(per_browser))
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let mut browsers = Vec::new();
    for profile in &profiles {
        // Tabs in the background are the rule here: Chromium must not slow them down.
        browsers.push(
            browser_with(
                port,
                profile.path(),
                &[
                    "--disable-background-timer-throttling",
                    "--disable-renderer-backgrounding",
                    "--disable-backgrounding-occluded-windows",
                ],
            )
            .await,
        );
    }

    // One tab per copy: its student page, loaded, its terminal at a prompt, the MTU watched.
    let opening = Instant::now();
    let mut tabs = Vec::new();
    for (i, (copy, url)) in copies.iter().enumerate() {
        let c = &browsers[i / per_browser];
        let handle = if i % per_browser == 0 {
            c.window().await.unwrap()
        } else {
            c.new_window(true).await.unwrap().handle
        };
        c.switch_to_window(handle.clone()).await.unwrap();
        c.goto(url).await.unwrap();
        wait_for(
            c,
            30,
            "the page's terminal at a prompt",
            &format!(
                "const r = document.querySelector('#term-vm-a .xterm-rows'); \
                 return r && r.innerText.includes('{copy}/vm-a#')"
            ),
        )
        .await;
        c.execute(WATCH_MTU, vec![]).await.unwrap();
        tabs.push((copy.clone(), i / per_browser, handle));
    }
    let opened = opening.elapsed().as_secs_f64();
    let settle = Instant::now() + Duration::from_secs(3);
    tokio::time::sleep_until(settle.into()).await;

    let (rss, children_rss, children) = memory_mib(pid);
    let (chromium_rss, chromium_pss, chromium_n) = memory_of("chromium");
    let cpu0 = cpu_seconds(pid);
    tokio::time::sleep(phase).await;
    let idle = (cpu_seconds(pid) - cpu0) / phase.as_secs_f64() * 100.0;

    // Changes in the guests, one every 100 ms round the class, each copy's MTUs distinct.
    let n = tabs.len();
    let mut sent: Vec<(usize, u32, f64)> = Vec::new();
    let cpu1 = cpu_seconds(pid);
    let started = Instant::now();
    let mut k = 0usize;
    while started.elapsed() < phase {
        let i = k % n;
        let mtu = 1300 + (k / n % 150) as u32;
        let ns = vxlab::plan::instance_name(&tabs[i].0, "vm-a");
        let at = epoch_ms();
        let ok = std::process::Command::new("ip")
            .args(["-n", &ns, "link", "set", "vxlan0", "mtu", &mtu.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip -n {ns} link set vxlan0 mtu {mtu}");
        sent.push((i, mtu, at));
        k += 1;
        tokio::time::sleep_until((started + Duration::from_millis(100 * k as u64)).into()).await;
    }
    let took = started.elapsed().as_secs_f64();
    let busy = (cpu_seconds(pid) - cpu1) / took * 100.0;
    // Give the last change time to show, then read every tab's record.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut seen = Vec::new();
    for (_, b, handle) in &tabs {
        let c = &browsers[*b];
        c.switch_to_window(handle.clone()).await.unwrap();
        seen.push(c.execute("return window.vxlabSeen", vec![]).await.unwrap());
    }
    let latencies: Vec<f64> = sent
        .iter()
        .map(|(i, mtu, at)| {
            seen[*i][mtu.to_string()]
                .as_f64()
                .map_or(f64::INFINITY, |shown| shown - at)
        })
        .collect();
    println!(
        "student pages open in headless Chromium, one per copy: {n}, in {} browsers of up to \
         {per_browser} tabs (opened in {opened:.0} s)",
        browsers.len()
    );
    let rate = sent.len() as f64 / took;
    print_figures(
        "change in a guest -> shown in its tab",
        latencies,
        (idle, busy, rate),
    );
    println!(
        "server memory: {rss:.0} MiB resident; its {children} processes (shells, ip monitor): \
         {children_rss:.0} MiB"
    );
    println!(
        "Chromium with {n} pages: {chromium_n} processes, {chromium_rss:.0} MiB resident, \
         {chromium_pss:.0} MiB proportional"
    );
    // Back to the plan's MTU.
    for (copy, _, _) in &tabs {
        let ns = vxlab::plan::instance_name(copy, "vm-a");
        let _ = std::process::Command::new("ip")
            .args(["-n", &ns, "link", "set", "vxlan0", "mtu", "1450"])
            .status();
    }
    for c in browsers {
        let _ = c.close().await;
    }
}
