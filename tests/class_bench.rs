//! The class benchmark's client, run by `scripts/bench-class.sh` (ignored by `cargo test`: it
//! times things, it asserts nothing about time). It behaves like one browser page per copy:
//! the page's event stream (server-sent events) and one terminal (websocket) each. It
//! measures the server's CPU while idle and while students type, its memory, and the latency
//! from a command typed in a guest's terminal to the change on that copy's page.
//!
//! Input from the script, in the environment: BENCH_SHEET (the `vxlab sheet --format csv`
//! output), BENCH_PID (the server's pid), BENCH_SECONDS (length of each phase).

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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by scripts/bench-class.sh"]
async fn thirty_students_type_while_the_server_follows() {
    let sheet = std::env::var("BENCH_SHEET").expect("BENCH_SHEET");
    let pid: u32 = std::env::var("BENCH_PID").unwrap().parse().unwrap();
    let phase =
        Duration::from_secs(std::env::var("BENCH_SECONDS").map_or(10, |s| s.parse().unwrap()));
    let urls: Vec<String> = sheet
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap().to_string())
        .collect();
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
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let lost = latencies.iter().filter(|l| l.is_infinite()).count();
    println!("copies with a page and a terminal open: {n}");
    println!(
        "latency, command typed in a guest's terminal -> change on its page: {} changes, \
         median {:.0} ms, p95 {:.0} ms, max {:.0} ms, not seen within 5 s: {lost}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.95),
        latencies.last().unwrap()
    );
    println!("server CPU, idle: {idle:.1} % of one core");
    println!(
        "server CPU, while {:.0} changes/s: {busy:.1} % of one core",
        latencies.len() as f64 / started.elapsed().as_secs_f64()
    );
    println!(
        "server memory: {rss:.0} MiB resident ({rss_after:.0} MiB after the changes); \
         its {children} processes (shells, ip monitor): {children_rss:.0} MiB ({children_after:.0} MiB after)"
    );
}
